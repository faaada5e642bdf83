"""The saga benchmark's checks and verdicts, and its tables (rich on the terminal, markdown)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

CONFIRMED_PER_S_TARGET = 200.0
LATENCY_FACTOR = 1.5
LATENCY_SLACK_S = 2.0
HOT_RATIO_TARGET = 0.80
WORKER_PEAK_MB_TARGET = 300.0

Doc = dict[str, Any]


def _phase(result: Doc, name: str) -> Doc | None:
    found = result.get("phases", {}).get(name)
    return found if isinstance(found, dict) and "final" in found else None


def _rate(phase: Doc | None, key: str) -> float | None:
    return None if phase is None else phase.get(key)


def hot_checks(result: Doc, hot_stock: int) -> Doc:
    """Exactly ``hot_stock`` orders CONFIRMED, all others FAILED with OUT_OF_STOCK, and the hot
    SKU's stock at rest at zero on hand, zero reserved."""
    hot = _phase(result, "hot")
    if hot is None:
        return {"passed": False, "why": "the hot phase did not finish"}
    oos = sum(
        r["n"]
        for r in hot["by_status"]
        if r["status"] == "FAILED" and r["reason"] == "OUT_OF_STOCK"
    )
    stock = result.get("stock", {}).get("hot", {})
    checks = {
        "confirmed": hot["confirmed"],
        "expected_confirmed": hot_stock,
        "failed_out_of_stock": oos,
        "expected_out_of_stock": hot["orders"] - hot_stock,
        "stock_on_hand": stock.get("on_hand"),
        "stock_reserved": stock.get("reserved"),
    }
    passed = (
        hot["confirmed"] == hot_stock
        and oos == hot["orders"] - hot_stock
        and stock.get("on_hand") == 0
        and stock.get("reserved") == 0
    )
    return {**checks, "passed": passed}


def consistency(result: Doc) -> Doc:
    """Every phase finished, the ledger balances every stock row, nothing stays reserved."""
    stock = result.get("stock", {})
    spread_reserved = stock.get("spread", {}).get("reserved")
    finished = all(
        p.get("all_final") for p in result.get("phases", {}).values() if isinstance(p, dict)
    )
    return {
        "all_phases_final": finished,
        "ledger_mismatches": stock.get("ledger_mismatches"),
        "spread_reserved_at_rest": spread_reserved,
        "passed": finished and stock.get("ledger_mismatches") == 0 and spread_reserved == 0,
    }


def _verdict(target: str, subject: str, value: Any, passed: bool) -> Doc:
    return {"target": target, "subject": subject, "value": value, "passed": passed}


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(value, digits)


def transport_verdicts(transport: str, result: Doc) -> list[Doc]:
    spread, ref = _phase(result, "spread"), _phase(result, "reference")
    hot, slow = _phase(result, "hot"), _phase(result, "latency")
    confirmed = _rate(spread, "confirmed_per_s")
    found = [
        _verdict(
            f"orders/s POST to CONFIRMED >= {CONFIRMED_PER_S_TARGET:g}",
            transport,
            _round(confirmed),
            confirmed is not None and confirmed >= CONFIRMED_PER_S_TARGET,
        )
    ]
    ref_s = _rate(ref, "first_post_to_last_final_s")
    slow_s = _rate(slow, "first_post_to_last_final_s")
    limit = None if ref_s is None else LATENCY_FACTOR * ref_s + LATENCY_SLACK_S
    found.append(
        _verdict(
            f"payment latency: time <= {LATENCY_FACTOR:g} x zero-latency time + "
            f"{LATENCY_SLACK_S:g} s",
            transport,
            None if slow_s is None or limit is None else f"{slow_s:.1f} s (limit {limit:.1f} s)",
            slow_s is not None and limit is not None and slow_s <= limit,
        )
    )
    hot_rate, spread_rate = _rate(hot, "final_per_s"), _rate(spread, "final_per_s")
    ratio = hot_rate / spread_rate if hot_rate and spread_rate else None
    found.append(
        _verdict(
            f"hot SKU: final orders/s >= {HOT_RATIO_TARGET:.0%} of spread",
            transport,
            None if ratio is None else f"{ratio:.0%}",
            ratio is not None and ratio >= HOT_RATIO_TARGET,
        )
    )
    found.append(
        _verdict(
            "hot SKU: exactly the stock CONFIRMED, the rest FAILED OUT_OF_STOCK, stock at zero",
            transport,
            None if hot is None else f"{hot['confirmed']} confirmed",
            bool(result.get("hot_checks", {}).get("passed")),
        )
    )
    peak = result.get("memory", {}).get("worker_peak_mb")
    found.append(
        _verdict(
            f"worker peak RSS (VmHWM) <= {WORKER_PEAK_MB_TARGET:g} MB",
            transport,
            _round(peak, 1),
            peak is not None and 0 < peak <= WORKER_PEAK_MB_TARGET,
        )
    )
    found.append(
        _verdict(
            "every order final, ledger balanced, nothing left reserved",
            transport,
            None,
            bool(result.get("consistency", {}).get("passed")),
        )
    )
    return found


def verdicts(document: Doc) -> list[Doc]:
    found: list[Doc] = []
    for transport, result in document["transports"].items():
        found += transport_verdicts(transport, result)
    return found


def correctness_failed(document: Doc) -> bool:
    """A failed correctness check (hot SKU, consistency) or a transport that did not finish."""
    for result in document["transports"].values():
        if "error" in result:
            return True
        if not (result["hot_checks"]["passed"] and result["consistency"]["passed"]):
            return True
    return False


# ---- tables ------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _cpu(phase: Doc, names: tuple[str, ...]) -> str:
    per = phase["cpu"]["ms_per_order"]
    return " / ".join(f"{per[n]:.2f}" if n in per else "-" for n in names)


def _cores(phase: Doc, names: tuple[str, ...]) -> str:
    cores = phase["cpu"]["cores"]
    return " / ".join(f"{cores[n]:.2f}" if n in cores else "-" for n in names)


def _database(per: Doc) -> str:
    return f"{per['transactions']:.0f} / {per['rows_inserted'] + per['rows_updated']:.0f}"


def _steps(phase: Doc) -> str:
    return ", ".join(f"{s['step']} {s['p50_s'] * 1000:.0f}" for s in phase["steps"] if s["n"])


ROWS: list[tuple[str, str, Callable[[Doc], str]]] = [
    ("spread", "orders (SKUs)", lambda p: f"{p['orders']} ({p['skus']})"),
    ("spread", "POST accepted/s (client)", lambda p: _f(p["post"]["accepted_per_s"])),
    ("spread", "orders/s POST to CONFIRMED", lambda p: _f(p["confirmed_per_s"])),
    (
        "spread",
        "first POST to last CONFIRMED, s",
        lambda p: _f(p["first_post_to_last_final_s"], "{:.2f}"),
    ),
    (
        "spread",
        "POST to CONFIRMED p50 / p99 ms",
        lambda p: (
            f"{p['post_to_confirmed_ms']['p50_ms']:.0f} / {p['post_to_confirmed_ms']['p99_ms']:.0f}"
        ),
    ),
    (
        "spread",
        "CPU ms/order api / worker / relay / our pg backends / broker",
        lambda p: _cpu(p, ("api", "worker", "relay", "postgres_ours", "broker")),
    ),
    (
        "spread",
        "cores busy: machine / worker / our pg backends / other processes",
        lambda p: _cores(p, ("machine", "worker", "postgres_ours", "other")),
    ),
    (
        "spread",
        "intake to saga started p50 / p99 ms",
        lambda p: (
            f"{p['intake_to_saga_started']['p50_s'] * 1000:.0f} / "
            f"{p['intake_to_saga_started']['p99_s'] * 1000:.0f}"
        ),
    ),
    (
        "spread",
        "outbox messages per order (hand-offs not written)",
        lambda p: _f(p["messages_per_order"], "{:.1f}"),
    ),
    (
        "spread",
        "worker CPU ms per delivery (inbox row)",
        lambda p: _f(p["worker_cpu_ms_per_message"], "{:.2f}"),
    ),
    (
        "spread",
        "PostgreSQL transactions / rows written per order",
        lambda p: _database(p["database_per_order"]),
    ),
    ("spread", "step p50 ms (request to reply applied)", _steps),
    (
        "reference",
        "zero latency: orders, s",
        lambda p: f"{p['orders']}, {p['first_post_to_last_final_s']:.2f}",
    ),
    (
        "latency",
        "payment latency: orders, s",
        lambda p: f"{p['orders']}, {p['first_post_to_last_final_s']:.2f}",
    ),
    ("latency", "payment latency: step p50 ms", _steps),
    (
        "hot",
        "hot SKU: CONFIRMED / FAILED",
        lambda p: f"{p['confirmed']} / {p['failed']}",
    ),
    ("hot", "hot SKU: final orders/s", lambda p: _f(p["final_per_s"])),
    ("hot", "hot SKU: step p50 ms", _steps),
]


def _cell(result: Doc, phase_name: str, render: Callable[[Doc], str]) -> str:
    if "error" in result and not result.get("phases"):
        return "failed"
    phase = _phase(result, phase_name)
    if phase is None:
        return "-"
    try:
        return render(phase)
    except (KeyError, TypeError, ZeroDivisionError):
        return "-"


def _summary_rows(document: Doc) -> list[tuple[str, list[str]]]:
    transports: dict[str, Doc] = document["transports"]
    rows = [
        (label, [_cell(r, phase, render) for r in transports.values()])
        for phase, label, render in ROWS
    ]
    rows.append(
        (
            "worker peak RSS (VmHWM), MB",
            [_f(r.get("memory", {}).get("worker_peak_mb"), "{:.1f}") for r in transports.values()],
        )
    )
    rows.append(
        (
            "failed attempts / dead letters (whole run)",
            [
                f"{r['problems']['failed_attempts']} / {r['problems']['dead_letters']}"
                if "problems" in r
                else "-"
                for r in transports.values()
            ],
        )
    )
    rows.append(
        (
            "ledger mismatches / spread reserved at rest",
            [
                f"{r['consistency']['ledger_mismatches']} / "
                f"{r['consistency']['spread_reserved_at_rest']}"
                if "consistency" in r
                else "-"
                for r in transports.values()
            ],
        )
    )
    return rows


def _setting(document: Doc) -> str:
    connection = document["machine"].get("postgresql_connection", "tcp 127.0.0.1:5432")
    return f"orderly {document['commit']}, PostgreSQL over {connection}"


def print_rich(document: Doc, console: Console | None = None) -> None:
    console = console or Console()
    names = list(document["transports"])
    table = Table(title=f"Saga benchmark {document['started']} ({_setting(document)})")
    table.add_column("measurement")
    for name in names:
        table.add_column(name, justify="right")
    for label, cells in _summary_rows(document):
        table.add_row(label, *cells)
    console.print(table)
    targets = Table(title="Targets")
    for column in ("target", "transport", "measured", "met"):
        targets.add_column(column)
    for v in document["verdicts"]:
        met = "[green]yes[/green]" if v["passed"] else "[red]NO[/red]"
        targets.add_row(v["target"], v["subject"], str(v["value"]), met)
    console.print(targets)


def markdown(document: Doc) -> str:
    names = list(document["transports"])
    lines = [
        f"Saga benchmark {document['started']} ({_setting(document)})",
        "",
        "| measurement | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for label, cells in _summary_rows(document):
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| target | transport | measured | met |", "|---|---|---|---|"]
    for v in document["verdicts"]:
        lines.append(
            f"| {v['target']} | {v['subject']} | {v['value']} | {'yes' if v['passed'] else 'NO'} |"
        )
    return "\n".join(lines)
