"""`orderly orders` and `orderly projections`: an order's audit trail, and the read models.

``orders trail`` merges everything recorded about one order (its events, the saga's log,
failed attempts and dead letters, payment operations, shipments) into one timeline.
``projections rebuild`` refolds the read models from the order streams and the stock ledger;
``projections check`` does the same and says whether the live models had drifted.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.text import Text

from orderly.bootstrap import Container
from orderly.services.projections import (
    FULFILMENT,
    INVENTORY_LEVELS,
    ORDER_HISTORY,
    READ_MODELS,
    snapshot_differences,
)
from orderly.services.read_model_ports import ProjectionStore, TrailView

orders_app = typer.Typer(help="Look into orders.", no_args_is_help=True, add_completion=False)
projections_app = typer.Typer(
    help="Rebuild and check the read models.", no_args_is_help=True, add_completion=False
)
console = Console()

T = TypeVar("T")

RULE = "━" * 60
SOURCE_WIDTH = 11
SHOWN_KEYS = 5
SOURCE_STYLES = {
    "event": "bold",
    "saga": "cyan",
    "attempt": "yellow",
    "dead-letter": "bold red",
    "payment": "green",
    "shipment": "magenta",
}
MODEL_NAMES = {
    ORDER_HISTORY: "order history",
    INVENTORY_LEVELS: "inventory levels",
    FULFILMENT: "fulfilment",
}


def _fail(message: str) -> typer.Exit:
    # cli.py imports this module to register it, so its helpers are looked up at call time.
    from orderly.entrypoints.cli import _fail as fail

    return fail(message)


def _with_container(work: Callable[[Container], Awaitable[T]]) -> T:
    from orderly.entrypoints.cli import _settings, _with_container

    async def run(container: Container) -> T:
        await container.check_schema()
        return await work(container)

    return _with_container(_settings(), run)


def _trail_view(container: Container) -> TrailView:
    return container.trail()


def _store(container: Container) -> ProjectionStore:
    return container.projection_store()


# ---- orders trail ----------------------------------------------------------------------------


def _when(iso: str) -> str:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(order: dict[str, Any]) -> None:
    status = order["status"]
    if order.get("failureReason"):
        status += f" ({order['failureReason']})"
    fields = {
        "orderId": order["orderId"],
        "customer": order["customerId"],
        "status": status,
        "total": f"{order['totalAmount']} {order['currency']} (minor units)",
        "placed": _when(order["createdAt"]),
        "updated": f"{_when(order['updatedAt'])} (version {order['version']})",
    }
    for name, value in fields.items():
        console.print(Text.assemble((f"{name + ':':<10}", "bold"), value))


def _why(entry: dict[str, Any]) -> str | None:
    """The error behind a failed attempt or a dead letter, on a line of its own."""
    if entry["source"] not in ("attempt", "dead-letter"):
        return None
    error = entry["detail"].get("error")
    return str(error).splitlines()[0] if error else None


def _print_trail(trail: dict[str, Any]) -> None:
    _header(trail["order"])
    console.print(RULE, style="dim", highlight=False)
    indent = " " * (len("[2026-01-01T00:00:00.000Z] ") + SOURCE_WIDTH + 1)
    for entry in trail["entries"]:
        source = entry["source"]
        console.print(
            Text.assemble(
                (f"[{_when(entry['at'])}] ", "dim"),
                (f"{source:<{SOURCE_WIDTH}} ", SOURCE_STYLES.get(source, "")),
                entry["what"],
            )
        )
        why = _why(entry)
        if why:
            console.print(Text(indent + why, style="dim"))
    if not trail["entries"]:
        console.print("(nothing recorded yet)", highlight=False)


OrderId = Annotated[str, typer.Argument(metavar="ORDER_ID", help="The order's id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the trail as JSON.")]


@orders_app.command("trail")
def trail(order_id: OrderId, as_json: AsJson = False) -> None:
    """Show everything that happened to ORDER_ID (events, saga, failures, payments, shipments)."""

    async def work(container: Container) -> dict[str, Any] | None:
        return await _trail_view(container).trail(order_id)

    found = _with_container(work)
    if found is None:
        raise _fail(f"no order {order_id!r}")
    if as_json:
        typer.echo(json.dumps(found, indent=2, ensure_ascii=False))
    else:
        _print_trail(found)


# ---- projections rebuild / check -------------------------------------------------------------


class _Bars:
    """A progress bar per rebuild phase, fed by the store's progress callback."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(task, completed=done, total=total)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


async def _rebuild(store: ProjectionStore) -> dict[str, int]:
    with _progress() as progress:
        return await store.rebuild(_Bars(progress))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{MODEL_NAMES[model]} {counts.get(model, 0)}" for model in READ_MODELS)


@projections_app.command("rebuild")
def rebuild() -> None:
    """Wipe the read models and refold them from the order streams and the stock ledger."""

    async def work(container: Container) -> dict[str, int]:
        return await _rebuild(_store(container))

    counts = _with_container(work)
    console.print(f"read models rebuilt (rows): {_counts(counts)}", highlight=False)


@projections_app.command("check")
def check() -> None:
    """Rebuild the read models and say whether the live ones matched them (exit 1 if not)."""
    # Messages still on their way count as differences: run it while no orders move. The
    # rebuilt models stay either way.

    async def work(container: Container) -> tuple[dict[str, int], dict[str, list[str]]]:
        store = _store(container)
        live = await store.snapshot()
        counts = await _rebuild(store)
        return counts, snapshot_differences(live, await store.snapshot())

    counts, differences = _with_container(work)
    drifted = {model: keys for model, keys in differences.items() if keys}
    if not drifted:
        console.print(f"read models match the logs (rows): {_counts(counts)}", highlight=False)
        return
    for model, keys in drifted.items():
        shown = ", ".join(keys[:SHOWN_KEYS]) + (", …" if len(keys) > SHOWN_KEYS else "")
        console.print(
            f"{MODEL_NAMES[model]}: {len(keys)} row(s) differed: {shown}",
            highlight=False,
            markup=False,
        )
    console.print(
        f"read models did NOT match the logs; rebuilt now (rows): {_counts(counts)}",
        highlight=False,
    )
    raise typer.Exit(code=1)
