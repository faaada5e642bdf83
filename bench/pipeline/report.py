"""The pipeline benchmark's verdicts against its targets, and its markdown tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MESSAGES_TARGET = 1500.0
MESSAGES_TARGET_TRANSPORTS = ("local", "amqp")
P99_TARGET_MS = 50.0
CONFIRMED_RATIO_TARGET = 0.60

Doc = dict[str, Any]


def _ok(result: Doc) -> bool:
    return "error" not in result


def exactly_once(result: Doc) -> bool:
    """Every message's effect ran exactly once, and the inbox holds one row per message."""
    phases = [result[p] for p in ("throughput", "latency")]
    applied = all(p["done"] == p["items"] and p["max_applied"] == 1 for p in phases)
    return applied and result["inbox_rows"] == result["messages_total"]


def _message_verdicts(messages: dict[str, Doc], rate: float) -> list[Doc]:
    found: list[Doc] = []
    for transport, result in messages.items():
        if transport in MESSAGES_TARGET_TRANSPORTS:
            value = result["throughput"].get("throughput", 0.0) if _ok(result) else 0.0
            found.append(
                {
                    "target": f"messages/s insert to effect >= {MESSAGES_TARGET:g}",
                    "subject": transport,
                    "value": round(value),
                    "passed": _ok(result) and value >= MESSAGES_TARGET,
                }
            )
        p99 = result["latency"]["latency_ms"]["effect"]["p99_ms"] if _ok(result) else None
        found.append(
            {
                "target": f"end-to-end p99 <= {P99_TARGET_MS:g} ms at {rate:g} messages/s",
                "subject": transport,
                "value": None if p99 is None else round(p99, 1),
                "passed": p99 is not None and p99 <= P99_TARGET_MS,
            }
        )
    return found


def confirmed_ratio(orders: dict[str, Doc], variant: str) -> float | None:
    intake, flow = orders.get("intake", {}), orders.get(variant, {})
    if not (_ok(intake) and _ok(flow) and intake and flow):
        return None
    reference = intake["closed"]["load"]["throughput"]
    confirmed = flow["closed"].get("confirmed_rate", 0.0)
    return float(confirmed / reference) if reference else None


def _order_verdicts(orders: dict[str, Doc]) -> list[Doc]:
    found: list[Doc] = []
    for variant in orders:
        if variant == "intake":
            continue
        ratio = confirmed_ratio(orders, variant)
        found.append(
            {
                "target": f"orders/s to CONFIRMED >= {CONFIRMED_RATIO_TARGET:.0%} of intake-only",
                "subject": variant,
                "value": None if ratio is None else round(ratio, 3),
                "passed": ratio is not None and ratio >= CONFIRMED_RATIO_TARGET,
            }
        )
    return found


def verdicts(document: Doc) -> list[Doc]:
    rate = document["options"]["messages"]["rate"]
    return _message_verdicts(document["messages"], rate) + _order_verdicts(document["orders"])


def _pair(latency: Doc, *keys: str) -> str:
    if not latency["count"]:
        return "-"
    return " / ".join(f"{latency[k]:.1f}" for k in keys)


def _cpu(per: Doc, names: tuple[str, ...]) -> str:
    return " / ".join(f"{per[n]:.2f}" if n in per else "-" for n in names)


def other_cores(cores: Doc) -> float:
    """Cores busy with something that is not ours (other work on the machine)."""
    return float(cores["machine"] - sum(v for k, v in cores.items() if k != "machine"))


def _message_row(transport: str, r: Doc) -> str:
    if not _ok(r):
        return f"| {transport} | **failed**: {r['error'][:160]} |" + " |" * 10
    bulk, steady = r["throughput"], r["latency"]
    lat = steady["latency_ms"]
    cells = [
        f"**{bulk.get('throughput', 0):.0f}**",
        f"{bulk.get('consume_rate', 0):.0f}",
        f"{bulk['produced']['rate']:.0f}",
        _pair(lat["effect"], "p50_ms", "p99_ms", "max_ms"),
        _pair(lat["published"], "p50_ms", "p99_ms") if transport != "local" else "-",
        _pair(lat["consumer_started"], "p50_ms", "p99_ms"),
        _pair(r["worker"]["transactions"]["latency"]["commit_ms"], "p50_ms", "p99_ms")
        if "transactions" in r["worker"]
        else "-",
        _cpu(bulk["cpu_ms_per_message"], ("worker", "relay", "postgres", "broker", "client")),
        f"{other_cores(bulk['cpu_cores']):.2f} / {other_cores(steady['cpu_cores']):.2f}",
        f"{steady['produced']['max_lag_ms']:.1f}",
        "yes" if exactly_once(r) else "**NO**",
    ]
    return f"| {transport} | " + " | ".join(cells) + " |"


def messages_table(document: Doc) -> list[str]:
    options = document["options"]["messages"]
    return [
        f"Messages: {options['messages']} in transactions of {options['batch']} (after "
        f"{options['warmup']} warm-up), then {options['rate']:g}/s for {options['duration']:g} s.",
        "",
        "| transport | messages/s insert to effect | consumer messages/s | producer messages/s "
        f"| at {options['rate']:g}/s: effect p50 / p99 / max ms | published p50 / p99 ms "
        "| consumer start p50 / p99 ms | its commit p50 / p99 ms "
        "| CPU ms/msg worker / relay / pg / broker / producer | other load, cores "
        "| producer late, max ms | exactly once |",
        "|---" * 12 + "|",
        *(_message_row(t, r) for t, r in document["messages"].items()),
    ]


def _orders_cell(render: Callable[[Doc], str]) -> Callable[[Doc], str]:
    def safe(result: Doc) -> str:
        if not _ok(result):
            return f"failed: {result['error'][:80]}"
        try:
            return render(result)
        except (KeyError, TypeError):
            return "-"

    return safe


def _open(render: Callable[[Doc], str]) -> Callable[[Doc], str]:
    return lambda r: render(r["open"]) if "open" in r else "-"


ORDER_ROWS: list[tuple[str, Callable[[Doc], str]]] = [
    (
        "closed loop: accepted orders/s (client)",
        lambda r: f"{r['closed']['load']['throughput']:.0f}",
    ),
    (
        "closed loop: **orders/s to CONFIRMED**",
        lambda r: f"**{r['closed']['confirmed_rate']:.0f}**",
    ),
    (
        "closed loop: orders confirmed / failed / pending",
        lambda r: (
            f"{r['closed']['confirmed']} / {r['closed']['failed']} / {r['closed']['pending']}"
        ),
    ),
    (
        "closed loop: POST to CONFIRMED p50 / p99 ms",
        lambda r: _pair(r["closed"]["confirm_latency_ms"], "p50_ms", "p99_ms"),
    ),
    (
        "closed loop: CPU ms/order api / worker / relay / pg / broker",
        lambda r: _cpu(
            r["closed"]["cpu_ms_per_order"], ("api", "worker", "relay", "postgres", "broker")
        ),
    ),
    ("open loop: achieved orders/s", _open(lambda o: f"{o['load']['throughput']:.0f}")),
    (
        "open loop: POST to CONFIRMED p50 / p99 / max ms",
        _open(lambda o: _pair(o["confirm_latency_ms"], "p50_ms", "p99_ms", "max_ms")),
    ),
    (
        "closed loop: other load on the machine, cores",
        lambda r: f"{other_cores(r['closed']['cpu_cores']):.2f}",
    ),
    (
        "failed attempts / dead letters / deadlocks",
        lambda r: " / ".join(str(v) for v in r["problems"].values()),
    ),
]


def orders_table(document: Doc) -> list[str]:
    orders: dict[str, Doc] = document["orders"]
    options = document["options"]["orders"]
    names = list(orders)
    lines = [
        f"Orders: closed loop {options['connections']} connections x {options['duration']:g} s "
        f"(after {options['warmup']:g} s warm-up, drained); open loop {options['rate']:g} "
        f"orders/s x {options['open_duration']:g} s. Lines in {document['options']['line_order']} "
        f"SKU order, over {options['skus']} SKUs; relay on amqp: {options['relay']}.",
        "",
        "| measurement | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for label, render in ORDER_ROWS:
        cells = [_orders_cell(render)(orders[n]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = [None if n == "intake" else confirmed_ratio(orders, n) for n in names]
    lines.append(
        "| CONFIRMED/s over intake-only accepted/s | "
        + " | ".join("-" if r is None else f"{r:.0%}" for r in ratios)
        + " |"
    )
    return lines


def markdown(document: Doc) -> str:
    machine = document["machine"]
    connection = machine.get("postgresql_connection", "tcp 127.0.0.1:5432")
    lines = [
        f"Pipeline benchmark {document['started']}: {machine['cores']} cores "
        f"({machine['cpu_model']}), PostgreSQL {machine['postgresql']} "
        f"(over {connection}), orderly "
        f"{document['commit']}; producer, load generator, processes, brokers and database "
        "share the cores.",
        "",
    ]
    if document["messages"]:
        lines += [*messages_table(document), ""]
    if document["orders"]:
        lines += [*orders_table(document), ""]
    lines += ["| target | subject | measured | met |", "|---|---|---|---|"]
    for v in document["verdicts"]:
        met = "yes" if v["passed"] else "NO"
        lines.append(f"| {v['target']} | {v['subject']} | {v['value']} | {met} |")
    return "\n".join(lines)
