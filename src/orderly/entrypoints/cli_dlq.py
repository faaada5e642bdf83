"""`orderly dlq`: list, inspect and replay the messages parked in the dead-letter store.

A replay re-queues the message under its own id through the outbox and is recorded with who
asked (``cli:<os user>``) and when; the consumer's inbox makes replaying a message whose effect
was already applied change nothing.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from orderly.bootstrap import Container
from orderly.services.dead_letters import (
    PARKED,
    DeadLetterDesk,
    DeadLetterNotFound,
    NotReplayable,
)
from orderly.services.ports import DeadLetter

dlq_app = typer.Typer(
    help="Inspect and replay the dead-letter queue.", no_args_is_help=True, add_completion=False
)
console = Console()

T = TypeVar("T")

STATUSES = ("parked", "replayed", "all")
ERROR_WIDTH = 60
MAX_LIMIT = 1000
PAGE = 200
MAX_ID = 2**63 - 1
REQUESTED_BY_MAX = 128  # the width of dead_letter_replays.requested_by


def _fail(message: str) -> typer.Exit:
    # cli.py imports this module to register it, so its helpers are looked up at call time.
    from orderly.entrypoints.cli import _fail as fail

    return fail(message)


def _with_desk(work: Callable[[DeadLetterDesk], Awaitable[T]]) -> T:
    from orderly.entrypoints.cli import _settings, _with_container

    async def run(container: Container) -> T:
        await container.check_schema()
        return await work(container.dead_letter_desk())

    return _with_container(_settings(), run)


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"cli:{user}"[:REQUESTED_BY_MAX]


def _letter_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise _fail(f"a dead letter id is a positive integer, not {text!r}")
    return int(text)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: str, width: int = ERROR_WIDTH) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def _letters_table(letters: list[DeadLetter]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("id", justify="right", no_wrap=True)
    for name in ("consumer", "type", "correlation id"):
        table.add_column(name, overflow="fold")
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold")
    table.add_column("last failure", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for letter in letters:
        table.add_row(
            str(letter.id),
            escape(letter.consumer),
            escape(letter.message.type),
            escape(letter.message.correlation_id),
            str(letter.attempts),
            escape(_short(letter.error)),
            _when(letter.last_failed_at),
            escape(letter.status),
        )
    return table


Status = Annotated[
    str, typer.Option("--status", help="parked, replayed or all.", show_default=True)
]
Consumer = Annotated[str | None, typer.Option("--consumer", help="Only this consumer's letters.")]
Limit = Annotated[int, typer.Option("--limit", help=f"At most this many (1-{MAX_LIMIT}).")]
After = Annotated[int, typer.Option("--after", help="Only letters with a greater id (paging).")]


@dlq_app.command("list")
def list_letters(
    status: Status = "parked",
    consumer: Consumer = None,
    limit: Limit = 50,
    after: After = 0,
) -> None:
    """List dead letters, oldest first (parked ones unless --status says otherwise)."""
    if status not in STATUSES:
        raise _fail(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise _fail(f"--limit must be from 1 to {MAX_LIMIT}, not {limit}")
    if not 0 <= after <= MAX_ID:
        raise _fail(f"--after must be from 0 to {MAX_ID}, not {after}")

    async def work(desk: DeadLetterDesk) -> list[DeadLetter]:
        return await desk.letters(
            status=None if status == "all" else status,
            consumer=consumer,
            limit=limit + 1,
            after_id=after,
        )

    letters = _with_desk(work)
    if not letters:
        console.print(f"no dead letters (status {status})", highlight=False)
        return
    console.print(_letters_table(letters[:limit]))
    if len(letters) > limit:
        console.print(f"more: --after {letters[limit - 1].id}", highlight=False)


def _fields(letter: DeadLetter) -> Table:
    message = letter.message
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    rows = {
        "id": str(letter.id),
        "status": letter.status,
        "consumer": letter.consumer,
        "message id": message.id,
        "type": message.type,
        "key": message.key,
        "correlation id": message.correlation_id,
        "causation id": message.causation_id or "-",
        "message created": _when(message.created_at),
        "attempts": str(letter.attempts),
        "first failure": _when(letter.first_failed_at),
        "last failure": _when(letter.last_failed_at),
        "parked at": _when(letter.created_at),
        "error": letter.error,
    }
    for name, value in rows.items():
        grid.add_row(name, escape(value))
    return grid


def _replays_table(letter: DeadLetter) -> Table:
    table = Table(title="replays", title_justify="left")
    for name in ("replay", "requested by", "requested at", "result", "finished at"):
        table.add_column(name, no_wrap=name != "requested by")
    for replay in letter.replays:
        table.add_row(
            str(replay.id),
            escape(replay.requested_by),
            _when(replay.requested_at),
            replay.result,
            _when(replay.finished_at),
        )
    return table


def _section(title: str, body: str) -> None:
    console.rule(title, align="left")
    console.print(body, markup=False, highlight=False, soft_wrap=True)


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@dlq_app.command("show")
def show(letter_id: Annotated[str, typer.Argument(metavar="ID", help="The letter's id.")]) -> None:
    """Show one dead letter: message, error, payload, headers, context, traceback, replays."""
    number = _letter_id(letter_id)

    async def work(desk: DeadLetterDesk) -> DeadLetter:
        try:
            return await desk.show(number)
        except DeadLetterNotFound as exc:
            raise _fail(str(exc)) from exc

    letter = _with_desk(work)
    console.print(_fields(letter))
    _section("payload", _as_json(letter.message.payload))
    _section("headers", _as_json(letter.message.headers))
    _section("context", _as_json(letter.context))
    _section("traceback", letter.traceback.rstrip() or "(none)")
    if letter.replays:
        console.print(_replays_table(letter))
    else:
        console.print("never replayed", highlight=False)


def _replay_one(number: int, dry_run: bool) -> None:
    async def work(desk: DeadLetterDesk) -> int | None:
        try:
            outcome = await desk.replay(number, requested_by=_operator(), dry_run=dry_run)
        except (DeadLetterNotFound, NotReplayable) as exc:
            raise _fail(str(exc)) from exc
        return outcome.replay_id

    replay_id = _with_desk(work)
    if dry_run:
        console.print(f"dead letter {number} can be replayed (dry run: nothing queued)")
    else:
        console.print(f"dead letter {number} queued again as replay {replay_id}")


async def _parked_ids(desk: DeadLetterDesk, consumer: str | None) -> list[int]:
    ids: list[int] = []
    while page := await desk.letters(
        status=PARKED, consumer=consumer, limit=PAGE, after_id=ids[-1] if ids else 0
    ):
        ids.extend(letter.id for letter in page)
    return ids


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _replay_every(consumer: str | None, dry_run: bool) -> None:
    async def work(desk: DeadLetterDesk) -> tuple[int, int]:
        ids = await _parked_ids(desk, consumer)
        operator = _operator()
        done = skipped = 0
        with _progress() as progress:
            task = progress.add_task("replaying", total=len(ids))
            for number in ids:
                try:
                    await desk.replay(number, requested_by=operator, dry_run=dry_run)
                    done += 1
                except (DeadLetterNotFound, NotReplayable):
                    skipped += 1  # replayed by someone else since the listing
                progress.advance(task)
        return done, skipped

    done, skipped = _with_desk(work)
    _summary(done, skipped, consumer, dry_run)


def _summary(done: int, skipped: int, consumer: str | None, dry_run: bool) -> None:
    scope = f" of consumer {consumer}" if consumer else ""
    if done == skipped == 0:
        console.print(f"no parked dead letters{scope} to replay", highlight=False)
        return
    verb = "can be replayed (dry run: nothing queued)" if dry_run else "queued again"
    line = f"{done} dead letter(s){scope} {verb}"
    if skipped:
        line += f"; {skipped} skipped (replayed meanwhile)"
    console.print(line, highlight=False)


@dlq_app.command("replay")
def replay(
    letter_id: Annotated[
        str | None, typer.Argument(metavar="ID", help="The letter to replay.")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Replay every parked letter.")] = False,
    consumer: Annotated[
        str | None, typer.Option("--consumer", help="With --all: only this consumer's letters.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only check what would be replayed.")
    ] = False,
) -> None:
    """Queue dead letter ID (or, with --all, every parked one) again through the outbox."""
    if letter_id is not None and every:
        raise _fail("give a dead letter ID or --all, not both")
    if letter_id is None and not every:
        raise _fail("give a dead letter ID, or --all to replay every parked letter")
    if consumer is not None and not every:
        raise _fail("--consumer goes with --all only")
    if every:
        _replay_every(consumer, dry_run)
    else:
        _replay_one(_letter_id(letter_id or ""), dry_run)
