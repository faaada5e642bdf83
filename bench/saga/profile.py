"""Summaries of a worker's cProfile output (``--profile-worker``): where its CPU time went.

The profile is timed in CPU seconds (``bench.saga.profiled``). cProfile sees the one thread and
adds a fixed cost to every Python call, so the run is slower and call-heavy code looks heavier;
read the shares, not the absolute times. Call counts of coroutines count every resumption.
"""

from __future__ import annotations

import pstats
from pathlib import Path
from typing import Any

PACKAGES = (
    "asyncpg",
    "sqlalchemy",
    "orderly",
    "asyncio",
    "uvloop",
    "aio_pika",
    "aiormq",
    "pamqp",
    "faststream",
    "structlog",
    "orjson",
    "json",
    "pydantic",
    "greenlet",
)


def _package(filename: str) -> str:
    for name in PACKAGES:
        if f"/{name}/" in filename or filename.endswith(f"/{name}.py"):
            return name
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins"
    return "other"


def summarize(path: Path, top: int = 25) -> dict[str, Any]:
    """Self time by package, and the functions with the most self time."""
    stats = pstats.Stats(str(path))
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    by_package: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in raw.items():
        name = _package(filename)
        by_package[name] = by_package.get(name, 0.0) + tottime
    by_module: dict[str, float] = {}
    for (filename, _, _), (_, _, tottime, _, _) in raw.items():
        if "/orderly/" in filename:
            module = filename.rsplit("/orderly/", 1)[1]
            by_module[module] = by_module.get(module, 0.0) + tottime
    functions = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return {
        "file": str(path),
        "total_s": total,
        "self_share_by_package": {
            k: round(v / total, 4) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "orderly_self_share_by_module": {
            k: round(v / total, 4)
            for k, v in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]
        },
        "top_self": [
            {
                "function": f"{Path(f).name}:{line}:{fn}",
                "calls": calls,
                "self_s": round(tt, 3),
                "cumulative_s": round(ct, 3),
            }
            for (f, line, fn), (_, calls, tt, ct, _) in functions
        ],
    }


def summarize_all(paths: list[Path]) -> list[dict[str, Any]]:
    return [summarize(p) for p in paths if p.exists()]
