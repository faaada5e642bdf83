"""Recording request outcomes and summarising latencies (nearest-rank percentiles, in ms)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles of the successful requests of one phase, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (``q`` in 0..1)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summarize(seconds: list[float]) -> Latency:
    ordered = sorted(s * 1000 for s in seconds)
    return Latency(
        count=len(ordered),
        mean_ms=sum(ordered) / len(ordered) if ordered else math.nan,
        p50_ms=percentile(ordered, 0.50),
        p90_ms=percentile(ordered, 0.90),
        p99_ms=percentile(ordered, 0.99),
        p999_ms=percentile(ordered, 0.999),
        max_ms=ordered[-1] if ordered else math.nan,
    )


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """What one load phase measured."""

    name: str
    sent: int
    ok: int
    errors: dict[str, int]
    elapsed_s: float
    latency: Latency
    offered_rate: float | None = None
    max_send_lag_ms: float | None = None

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "throughput": self.throughput, "error_count": self.error_count}


@dataclass(slots=True)
class Recorder:
    """Collects the latency of every good answer and a count of every kind of failure."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    send_lag: float = 0.0

    def ok(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def failed(self, kind: str) -> None:
        self.errors[kind] += 1

    def lagged(self, seconds: float) -> None:
        self.send_lag = max(self.send_lag, seconds)

    @property
    def sent(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def result(self, name: str, elapsed_s: float, offered_rate: float | None = None) -> PhaseResult:
        return PhaseResult(
            name=name,
            sent=self.sent,
            ok=len(self.latencies),
            errors=dict(self.errors),
            elapsed_s=elapsed_s,
            latency=summarize(self.latencies),
            offered_rate=offered_rate,
            max_send_lag_ms=self.send_lag * 1000 if offered_rate is not None else None,
        )
