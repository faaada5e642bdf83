"""The dead-letter admin API on SQLite and on the real PostgreSQL: list, show and replay.

Letters are parked through the real store; a replay must queue the message again (an outbox
row under the same message id with a ``replay-of`` header), record who asked, and go through
the consumer's inbox, so that a message whose effect was applied meanwhile changes nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.tables import outbox_messages
from orderly.domain.events import Message
from orderly.services.consumer import ConsumerRuntime, Handler, RuntimeOptions
from orderly.services.messaging import H_REPLAY_OF
from orderly.services.ports import MessageUnitOfWork, NewDeadLetter
from tests.conftest import Backend, bearer

pytestmark = pytest.mark.timeout(60)

DLQ = "/api/admin/dlq"
CONSUMER = "dlq-test"
TYPE = "test.dlq"
PROBLEM_JSON = "application/problem+json"


async def park(backend: Backend, *, consumer: str = CONSUMER, n: int = 1) -> tuple[int, Message]:
    """Park a message in the dead-letter store as the consumer runtime would; (id, message)."""
    now = backend.clock.now()
    key = f"order-{uuid.uuid4().hex[:8]}"
    message = Message(
        id=str(uuid.uuid4()),
        type=TYPE,
        key=key,
        payload={"n": n},
        created_at=now,
        correlation_id=key,
        causation_id="cause-1",
        headers={"traceparent": "00-abc-def-01"},
    )
    letter = NewDeadLetter(
        consumer=consumer,
        message=message,
        error="ConnectionError: the downstream service is down",
        traceback="Traceback (most recent call last):\nConnectionError: down\n",
        attempts=3,
        first_failed_at=now,
        last_failed_at=now,
        context={"n": n, "failures": [{"attempt": 3}]},
    )
    async with SqlUnitOfWork(backend.container.engine) as uow:
        letter_id = await uow.dead_letters.add(letter, now)
        await uow.commit()
    return letter_id, message


async def outbox_rows(backend: Backend, message_id: str) -> list[Any]:
    query = sa.select(outbox_messages).where(outbox_messages.c.message_id == message_id)
    async with backend.container.engine.connect() as conn:
        return list(await conn.execute(query))


async def replay(
    client: httpx.AsyncClient, auth: dict[str, str], letter_id: int | str, **params: str
) -> httpx.Response:
    return await client.post(f"{DLQ}/{letter_id}/replay", headers=auth, params=params)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://orderly.dev/problems/{slug}"
    return body


async def test_the_list_pages_oldest_first_with_a_cursor(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    ids = [(await park(backend, n=n))[0] for n in range(3)]

    first = await client.get(DLQ, params={"limit": 2}, headers=admin)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [item["id"] for item in page["items"]] == ids[:2]
    assert page["nextAfterId"] == ids[1]

    rest = (await client.get(DLQ, params={"afterId": ids[1]}, headers=admin)).json()
    assert [item["id"] for item in rest["items"]] == ids[2:]
    assert rest["nextAfterId"] is None

    item = page["items"][0]
    assert item["consumer"] == CONSUMER
    assert item["type"] == TYPE
    assert item["attempts"] == 3
    assert item["status"] == "parked"
    assert item["error"].startswith("ConnectionError")
    for field in ("firstFailedAt", "lastFailedAt", "createdAt"):
        assert item[field].endswith("Z"), item[field]
    assert "payload" not in item


async def test_the_list_filters_by_status_and_consumer(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    replayed, _ = await park(backend, consumer="alpha")
    parked, _ = await park(backend, consumer="beta")
    assert (await replay(client, admin, replayed)).status_code == 202

    async def listed(**params: str) -> list[int]:
        response = await client.get(DLQ, params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await listed() == [parked]
    assert await listed(status="parked") == [parked]
    assert await listed(status="replayed") == [replayed]
    assert await listed(status="all") == [replayed, parked]
    assert await listed(status="all", consumer="alpha") == [replayed]
    assert await listed(consumer="alpha") == []


async def test_show_returns_the_whole_letter(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    letter_id, message = await park(backend, n=7)
    response = await client.get(f"{DLQ}/{letter_id}", headers=admin)
    assert response.status_code == 200, response.text
    letter = response.json()
    assert letter["id"] == letter_id
    assert letter["messageId"] == message.id
    assert letter["key"] == message.key
    assert letter["correlationId"] == message.correlation_id
    assert letter["causationId"] == "cause-1"
    assert letter["payload"] == {"n": 7}
    assert letter["headers"] == {"traceparent": "00-abc-def-01"}
    assert letter["context"] == {"n": 7, "failures": [{"attempt": 3}]}
    assert "ConnectionError: down" in letter["traceback"]
    assert letter["messageCreatedAt"].endswith("Z")
    assert letter["replays"] == []


async def test_a_replay_queues_the_message_again_and_records_who_asked(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    letter_id, message = await park(backend)

    response = await replay(client, admin, letter_id)

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{DLQ}/{letter_id}"
    accepted = response.json()
    assert accepted["letterId"] == letter_id
    assert accepted["messageId"] == message.id
    assert accepted["dryRun"] is False
    replay_id = accepted["replayId"]
    assert isinstance(replay_id, int)

    [row] = await outbox_rows(backend, message.id)
    assert row.headers[H_REPLAY_OF] == str(replay_id)
    assert row.headers["traceparent"] == "00-abc-def-01"
    assert row.payload == message.payload
    assert row.type == TYPE

    letter = (await client.get(f"{DLQ}/{letter_id}", headers=admin)).json()
    assert letter["status"] == "replayed"
    [record] = letter["replays"]
    assert record["id"] == replay_id
    assert record["requestedBy"] == "admin:ops"
    assert record["result"] == "queued"
    assert record["requestedAt"].endswith("Z")
    assert record["finishedAt"] is None


async def test_a_second_replay_is_refused_with_409_and_queues_nothing(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    letter_id, message = await park(backend)
    first = await replay(client, admin, letter_id)
    assert first.status_code == 202

    for params in ({}, {"dryRun": "true"}):
        again = await replay(client, admin, letter_id, **params)
        problem = assert_problem(again, 409, "dead-letter-already-replayed")
        assert problem["replayId"] == first.json()["replayId"]
        assert str(letter_id) in problem["detail"]
    assert len(await outbox_rows(backend, message.id)) == 1


async def test_a_dry_run_checks_without_queueing(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    letter_id, message = await park(backend)

    response = await replay(client, admin, letter_id, dryRun="true")

    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    assert response.json() == {
        "letterId": letter_id,
        "replayId": None,
        "messageId": message.id,
        "dryRun": True,
    }
    assert await outbox_rows(backend, message.id) == []
    letter = (await client.get(f"{DLQ}/{letter_id}", headers=admin)).json()
    assert (letter["status"], letter["replays"]) == ("parked", [])


async def test_an_unknown_letter_is_404(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    letter_id, _ = await park(backend)
    missing = letter_id + 1000
    responses = [
        await client.get(f"{DLQ}/{missing}", headers=admin),
        await replay(client, admin, missing),
        await replay(client, admin, missing, dryRun="true"),
    ]
    for response in responses:
        problem = assert_problem(response, 404, "not-found")
        assert str(missing) in problem["detail"]


@pytest.mark.parametrize("bad_id", ["abc", "0", "-1", "1.5", str(2**63)])
async def test_a_bad_id_is_422(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str], bad_id: str
) -> None:
    assert_problem(await client.get(f"{DLQ}/{bad_id}", headers=admin), 422, "validation")
    assert_problem(await replay(client, admin, bad_id), 422, "validation")


@pytest.mark.parametrize(
    "params",
    [{"status": "lost"}, {"limit": "0"}, {"limit": "201"}, {"afterId": "-1"}, {"consumer": ""}],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], params: dict[str, str]
) -> None:
    assert_problem(await client.get(DLQ, params=params, headers=admin), 422, "validation")


async def test_customers_get_403_and_anonymous_callers_401(
    backend: Backend, client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    letter_id, message = await park(backend)
    calls = [
        ("GET", DLQ),
        ("GET", f"{DLQ}/{letter_id}"),
        ("POST", f"{DLQ}/{letter_id}/replay"),
    ]
    for method, url in calls:
        assert_problem(await client.request(method, url, headers=alice), 403, "forbidden")
        anonymous = await client.request(method, url)
        assert_problem(anonymous, 401, "unauthorized")
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert await outbox_rows(backend, message.id) == []


async def test_a_long_admin_id_is_cut_to_fit_the_replay_record(
    backend: Backend, client: httpx.AsyncClient
) -> None:
    letter_id, _ = await park(backend)
    long_admin = bearer(backend, "o" * 200, "admin")

    assert (await replay(client, long_admin, letter_id)).status_code == 202

    letter = (await client.get(f"{DLQ}/{letter_id}", headers=long_admin)).json()
    requested_by = letter["replays"][0]["requestedBy"]
    assert requested_by == ("admin:" + "o" * 200)[:128]


def counting_handler(calls: list[str]) -> Handler:
    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        calls.append(message.id)

    return Handler(CONSUMER, frozenset({TYPE}), handle)


@asynccontextmanager
async def consuming(backend: Backend, handler: Handler) -> AsyncIterator[None]:
    """The real consumer runtime on the local transport (the outbox table is the queue)."""
    container = backend.container
    transport = container.transport()
    await transport.connect()
    runtime = ConsumerRuntime(
        transport,
        container.message_uow,
        [handler],
        clock=container.clock,
        alerts=container.alerts(),
        options=RuntimeOptions(lanes=2, batch=8, receive_timeout=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)
        await transport.close()


async def replay_result(
    client: httpx.AsyncClient, admin: dict[str, str], letter_id: int, within: float = 15.0
) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        letter = (await client.get(f"{DLQ}/{letter_id}", headers=admin)).json()
        result: str = letter["replays"][0]["result"]
        if result != "queued":
            assert letter["replays"][0]["finishedAt"] is not None
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("the replay was not processed")


@pytest.mark.parametrize("applied_before", [False, True], ids=["fresh", "already-applied"])
async def test_a_replay_goes_through_the_consumers_inbox(
    backend: Backend, client: httpx.AsyncClient, admin: dict[str, str], applied_before: bool
) -> None:
    letter_id, message = await park(backend)
    if applied_before:
        # The effect landed after all (say, a delivery that was retried elsewhere).
        async with SqlUnitOfWork(backend.container.engine) as uow:
            assert await uow.inbox.record(CONSUMER, message.id, backend.clock.now())
            await uow.commit()
    calls: list[str] = []

    assert (await replay(client, admin, letter_id)).status_code == 202
    async with consuming(backend, counting_handler(calls)):
        result = await replay_result(client, admin, letter_id)

    if applied_before:
        assert (result, calls) == ("already-applied", [])
    else:
        assert (result, calls) == ("applied", [message.id])
