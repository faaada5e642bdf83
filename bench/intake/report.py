"""The intake benchmark's verdicts against its targets, and its markdown table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CLOSED_LOOP_RATIO_TARGET = 0.80
OPEN_LOOP_P99_TARGET_MS = 20.0

Doc = dict[str, Any]


def _rows_and_tuples_written(writes: Doc) -> int:
    rows = sum(abs(v) for v in writes["rows"].values())
    tuples = sum(
        counters[c]
        for counters in writes["tuples"].values()
        for c in ("n_tup_ins", "n_tup_upd", "n_tup_del")
    )
    return int(rows + tuples)


def verdicts(document: Doc) -> list[Doc]:
    """One entry per target and app: what was measured and whether it met the target."""
    apps: dict[str, Doc] = document["apps"]
    found: list[Doc] = []
    if {"orderly", "bare"} <= apps.keys():
        ratio = (
            apps["orderly"]["closed_loop"]["throughput"] / apps["bare"]["closed_loop"]["throughput"]
        )
        found.append(
            {
                "target": f"orderly closed-loop >= {CLOSED_LOOP_RATIO_TARGET:.0%} of bare",
                "app": "orderly",
                "value": round(ratio, 3),
                "passed": ratio >= CLOSED_LOOP_RATIO_TARGET,
            }
        )
    for app, result in apps.items():
        opened = result["open_loop"]
        p99 = opened["latency"]["p99_ms"]
        found.append(
            {
                "target": f"open-loop p99 <= {OPEN_LOOP_P99_TARGET_MS:g} ms, no errors",
                "app": app,
                "value": round(p99, 2),
                "passed": p99 <= OPEN_LOOP_P99_TARGET_MS and opened["error_count"] == 0,
            }
        )
        replay = result["replay"]
        written = _rows_and_tuples_written(replay["writes"])
        found.append(
            {
                "target": "duplicate-key retry inserts/updates/deletes no row",
                "app": app,
                "value": written,
                "passed": written == 0 and replay["different"] == 0,
            }
        )
    return found


def _at(app: Doc, path: str) -> Doc:
    for part in path.split("."):
        app = app[part]
    return app


def _throughput(path: str) -> Callable[[Doc], str]:
    return lambda app: f"{_at(app, path)['throughput']:.0f}"


def _latency(path: str, *keys: str) -> Callable[[Doc], str]:
    return lambda app: " / ".join(f"{_at(app, path)['latency'][k]:.1f}" for k in keys)


def _errors(path: str) -> Callable[[Doc], str]:
    def render(app: Doc) -> str:
        phase = _at(app, path)
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(phase["errors"].items()))
        return f"{phase['error_count']} ({detail})" if detail else "0"

    return render


def _cores(phase: str) -> Callable[[Doc], str]:
    def render(app: Doc) -> str:
        cpu = app["cpu_cores"][phase]
        return " / ".join(f"{cpu[k]:.2f}" for k in ("server", "postgres", "client", "total"))

    return render


def _cpu_per_request(phase: str, path: str) -> Callable[[Doc], str]:
    """Milliseconds of CPU per successful request: server / PostgreSQL."""

    def render(app: Doc) -> str:
        cpu, rate = app["cpu_cores"][phase], _at(app, path)["throughput"]
        if not rate:
            return "-"
        return f"{cpu['server'] * 1000 / rate:.2f} / {cpu['postgres'] * 1000 / rate:.2f}"

    return render


def _wal_per_order(app: Doc) -> str:
    return f"{app['wal_bytes_per_order']:.0f}"


def _send_lag(app: Doc) -> str:
    """How late the client was to send (its own stalls, if large, taint the latencies)."""
    return f"{app['open_loop']['max_send_lag_ms']:.1f}"


def _identical(app: Doc) -> str:
    replay = app["replay"]
    return f"{replay['identical']} of {replay['identical'] + replay['different']}"


def _replay_writes(app: Doc) -> str:
    w = app["replay"]["writes"]
    ins, upd = (sum(t[c] for t in w["tuples"].values()) for c in ("n_tup_ins", "n_tup_upd"))
    return f"rows {sum(w['rows'].values())}, ins {ins}, upd {upd}"


def _replay_side_effects(app: Doc) -> str:
    replay = app["replay"]
    w, n = replay["writes"], replay["warmup"]["sent"] + replay["measured"]["sent"]
    return (
        f"{w['wal_records'] / n:.2f} WAL records ({w['wal_bytes'] / n:.0f} B, "
        f"{w['wal_full_page_images'] / n:.2f} FPI), {w['xids_assigned'] / n:.2f} xid, "
        f"{w['key_sequence_advanced'] / n:.2f} seq"
    )


CORES = "cores server / pg / client / all"
ROWS: list[tuple[str, Callable[[Doc], str], bool]] = [
    ("closed loop: orders/s", _throughput("closed_loop"), True),
    ("closed loop: p50 / p99 ms", _latency("closed_loop", "p50_ms", "p99_ms"), False),
    ("closed loop: errors", _errors("closed_loop"), False),
    ("closed loop: WAL bytes per order", _wal_per_order, False),
    (f"closed loop: {CORES}", _cores("closed"), False),
    (
        "closed loop: CPU ms per order, server / pg",
        _cpu_per_request("closed", "closed_loop"),
        False,
    ),
    ("open loop: achieved orders/s", _throughput("open_loop"), False),
    ("open loop: p50 / p99 / max ms", _latency("open_loop", "p50_ms", "p99_ms", "max_ms"), False),
    ("open loop: errors", _errors("open_loop"), False),
    ("open loop: client's worst send lag ms", _send_lag, False),
    (f"open loop: {CORES}", _cores("open"), False),
    ("replay: requests/s", _throughput("replay.measured"), True),
    ("replay: p50 / p99 ms", _latency("replay.measured", "p50_ms", "p99_ms"), False),
    ("replay: identical answers", _identical, False),
    ("replay: rows / tuples written", _replay_writes, False),
    ("replay: per request", _replay_side_effects, False),
    (
        "replay: CPU ms per request, server / pg",
        _cpu_per_request("replay", "replay.measured"),
        False,
    ),
    (f"replay: {CORES}", _cores("replay"), False),
]


def _ratio(apps: dict[str, Doc], render: Callable[[Doc], str]) -> str:
    try:
        return f"{float(render(apps['orderly'])) / float(render(apps['bare'])):.0%}"
    except (KeyError, ValueError, ZeroDivisionError):
        return ""


def markdown(document: Doc) -> str:
    """The results table (one column per app, orderly / bare where it means something)."""
    apps: dict[str, Doc] = document["apps"]
    names = list(apps)
    options, machine = document["options"], document["machine"]
    connection = machine.get("postgresql_connection", "tcp 127.0.0.1:5432")
    lines = [
        f"Intake benchmark {document['started']}: {machine['cores']} cores "
        f"({machine['cpu_model']}), PostgreSQL {machine['postgresql']} "
        f"(over {connection}), orderly "
        f"{document['commit']}; the load generator, the server and the database share the cores.",
        f"Closed loop {options['connections']} connections x {options['duration']:g} s "
        f"(after {options['warmup']:g} s warm-up); open loop {options['rate']:g} orders/s x "
        f"{options['open_duration']:g} s; {options['replays']} retries of "
        f"{options['replay_keys']} finished keys.",
        "",
        "| measurement | " + " | ".join(names) + " | orderly / bare |",
        "|---" * (len(names) + 2) + "|",
    ]
    for label, render, with_ratio in ROWS:
        ratio = _ratio(apps, render) if with_ratio else ""
        lines.append(f"| {label} | " + " | ".join(render(apps[n]) for n in names) + f" | {ratio} |")
    lines += ["", "| target | app | measured | met |", "|---|---|---|---|"]
    for v in document["verdicts"]:
        met = "yes" if v["passed"] else "NO"
        lines.append(f"| {v['target']} | {v['app']} | {v['value']} | {met} |")
    return "\n".join(lines)
