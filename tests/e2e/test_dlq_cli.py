"""`orderly dlq` as an operator runs it: real processes against a SQLite file.

Letters are parked through the real dead-letter store; the commands must list and show them,
replay one or all of them through the outbox (recorded as ``cli:<os user>``), and refuse bad
input with one line on stderr and exit code 1.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages
from orderly.domain.events import Message
from orderly.services.messaging import H_REPLAY_OF
from orderly.services.ports import DeadLetter, NewDeadLetter
from tests.e2e.test_cli import assert_one_line_error
from tests.support.server import database_url, orderly_env, run_cli

OPERATOR = "dlq-operator"
# Wide enough for every column of `dlq list` on one line; LOGNAME names the OS user.
CLI_ENV = {"COLUMNS": "250", "LOGNAME": OPERATOR}
TYPE = "test.dlq"


def migrated(workdir: Path) -> dict[str, str]:
    env = orderly_env(workdir, CLI_ENV)
    result = run_cli(["migrate"], env, workdir)
    assert result.returncode == 0, result.stderr
    return env


def dlq(env: dict[str, str], workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["dlq", *args], env, workdir)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


async def _park(workdir: Path, consumer: str, error: str) -> tuple[int, Message]:
    engine = create_engine(database_url(workdir))
    now = datetime.now(UTC)
    key = f"order-{uuid.uuid4().hex[:8]}"
    message = Message(
        id=str(uuid.uuid4()),
        type=TYPE,
        key=key,
        payload={"n": 7, "sku": "PROD-001"},
        created_at=now,
        correlation_id=key,
        headers={"traceparent": "00-abc-def-01"},
    )
    letter = NewDeadLetter(
        consumer=consumer,
        message=message,
        error=error,
        traceback="Traceback (most recent call last):\nRuntimeError: the tail of the trace\n",
        attempts=3,
        first_failed_at=now,
        last_failed_at=now,
        context={"order": {"status": "PENDING"}},
    )
    try:
        async with SqlUnitOfWork(engine) as uow:
            letter_id = await uow.dead_letters.add(letter, now)
            await uow.commit()
    finally:
        await dispose_engine(engine)
    return letter_id, message


def park(
    workdir: Path, consumer: str = "process-order", error: str = "RuntimeError: boom"
) -> tuple[int, Message]:
    """Park a message as the consumer runtime would; (letter id, message)."""
    return asyncio.run(_park(workdir, consumer, error))


async def _stored(workdir: Path, letter_id: int, message_id: str) -> tuple[DeadLetter, list[Any]]:
    engine = create_engine(database_url(workdir))
    query = sa.select(outbox_messages).where(outbox_messages.c.message_id == message_id)
    try:
        async with SqlUnitOfWork(engine) as uow:
            letter = await uow.dead_letters.get(letter_id)
        async with engine.connect() as conn:
            rows = list(await conn.execute(query))
    finally:
        await dispose_engine(engine)
    assert letter is not None
    return letter, rows


def stored(workdir: Path, letter_id: int, message_id: str) -> tuple[DeadLetter, list[Any]]:
    """The letter as stored now, and the outbox rows carrying its message."""
    return asyncio.run(_stored(workdir, letter_id, message_id))


def test_list_and_show_a_parked_letter(tmp_path: Path) -> None:
    env = migrated(tmp_path)
    assert "no dead letters (status parked)" in ok(dlq(env, tmp_path, "list"))
    first, message = park(tmp_path, error="RuntimeError: [bold]not markup[/bold]\nsecond line")
    park(tmp_path, consumer="notify")

    listing = ok(dlq(env, tmp_path, "list"))
    [row] = [line for line in listing.splitlines() if message.correlation_id in line]
    for cell in (str(first), "process-order", TYPE, "RuntimeError: [bold]not markup[/bold]"):
        assert cell in row
    assert "second line" not in listing
    assert "parked" in row

    paged = ok(dlq(env, tmp_path, "list", "--limit", "1"))
    assert f"more: --after {first}" in paged
    assert "notify" not in paged
    filtered = ok(dlq(env, tmp_path, "list", "--consumer", "notify", "--status", "all"))
    assert "notify" in filtered
    assert "process-order" not in filtered
    assert "no dead letters (status replayed)" in ok(
        dlq(env, tmp_path, "list", "--status", "replayed")
    )

    shown = ok(dlq(env, tmp_path, "show", str(first)))
    for text in (message.id, message.key, '"sku": "PROD-001"', '"traceparent": "00-abc-def-01"'):
        assert text in shown
    assert '"status": "PENDING"' in shown
    assert "RuntimeError: the tail of the trace" in shown
    assert "never replayed" in shown


def test_replay_one_letter_queues_its_message_once(tmp_path: Path) -> None:
    env = migrated(tmp_path)
    letter_id, message = park(tmp_path)

    dry = ok(dlq(env, tmp_path, "replay", str(letter_id), "--dry-run"))
    assert f"dead letter {letter_id} can be replayed (dry run: nothing queued)" in dry
    letter, rows = stored(tmp_path, letter_id, message.id)
    assert (letter.status, letter.replays, rows) == ("parked", (), [])

    queued = ok(dlq(env, tmp_path, "replay", str(letter_id)))
    letter, rows = stored(tmp_path, letter_id, message.id)
    [replay] = letter.replays
    assert f"dead letter {letter_id} queued again as replay {replay.id}" in queued
    assert letter.status == "replayed"
    assert (replay.requested_by, replay.result) == (f"cli:{OPERATOR}", "queued")
    [row] = rows
    assert row.headers[H_REPLAY_OF] == str(replay.id)
    assert row.payload == message.payload

    shown = ok(dlq(env, tmp_path, "show", str(letter_id)))
    [history] = [line for line in shown.splitlines() if f"cli:{OPERATOR}" in line]
    assert "queued" in history

    again = dlq(env, tmp_path, "replay", str(letter_id))
    assert_one_line_error(again, f"dead letter {letter_id} was already replayed")
    assert len(stored(tmp_path, letter_id, message.id)[1]) == 1


def test_replay_all_of_one_consumer_then_the_rest(tmp_path: Path) -> None:
    env = migrated(tmp_path)
    alpha = [park(tmp_path, consumer="alpha") for _ in range(2)]
    beta = park(tmp_path, consumer="beta")

    dry = ok(dlq(env, tmp_path, "replay", "--all", "--consumer", "alpha", "--dry-run"))
    assert "2 dead letter(s) of consumer alpha can be replayed (dry run: nothing queued)" in dry
    assert all(stored(tmp_path, i, m.id)[0].status == "parked" for i, m in alpha)

    done = ok(dlq(env, tmp_path, "replay", "--all", "--consumer", "alpha"))
    assert "2 dead letter(s) of consumer alpha queued again" in done
    for letter_id, message in alpha:
        letter, rows = stored(tmp_path, letter_id, message.id)
        assert letter.status == "replayed"
        assert letter.replays[0].requested_by == f"cli:{OPERATOR}"
        assert len(rows) == 1
    assert stored(tmp_path, beta[0], beta[1].id)[0].status == "parked"

    assert "1 dead letter(s) queued again" in ok(dlq(env, tmp_path, "replay", "--all"))
    assert stored(tmp_path, beta[0], beta[1].id)[0].status == "replayed"
    assert "no parked dead letters to replay" in ok(dlq(env, tmp_path, "replay", "--all"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated database holding letter 1, already replayed."""
    path = tmp_path_factory.mktemp("dlq-cli")
    env = migrated(path)
    letter_id, _ = park(path)
    assert letter_id == 1
    ok(dlq(env, path, "replay", "1"))
    return path


BAD_INPUT: list[tuple[list[str], str]] = [
    (["show", "abc"], "a dead letter id is a positive integer, not 'abc'"),
    (["replay", "1.5"], "a dead letter id is a positive integer, not '1.5'"),
    (["replay", "0"], "a dead letter id is a positive integer, not '0'"),
    (["show", str(2**63)], f"a dead letter id is a positive integer, not '{2**63}'"),
    (["show", "99"], "no dead letter with id 99"),
    (["replay", "99"], "no dead letter with id 99"),
    (["replay", "1"], "dead letter 1 was already replayed"),
    (["replay", "1", "--dry-run"], "dead letter 1 was already replayed"),
    (["replay", "1", "--all"], "give a dead letter ID or --all, not both"),
    (["replay"], "give a dead letter ID, or --all"),
    (["replay", "1", "--consumer", "alpha"], "--consumer goes with --all only"),
    (["list", "--status", "lost"], "--status must be one of parked, replayed, all"),
    (["list", "--limit", "0"], "--limit must be from 1 to 1000"),
    (["list", "--after", str(2**63)], "--after must be from 0 to"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_INPUT, ids=[" ".join(args) for args, _ in BAD_INPUT]
)
def test_bad_input_gives_one_line_and_exit_1(workdir: Path, args: list[str], message: str) -> None:
    result = dlq(orderly_env(workdir, CLI_ENV), workdir, *args)
    assert_one_line_error(result, message)


def test_an_unmigrated_database_gives_one_line_and_exit_1(tmp_path: Path) -> None:
    result = dlq(orderly_env(tmp_path, CLI_ENV), tmp_path, "list")
    assert_one_line_error(result, "orderly migrate")
