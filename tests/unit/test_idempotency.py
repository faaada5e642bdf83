"""The idempotency component's rules, on the in-memory fakes."""

from __future__ import annotations

import asyncio
import string
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderly.services import idempotency
from orderly.services.idempotency import ActionResult
from orderly.services.idempotency_types import IdempotencyScope, StoredResponse
from orderly.services.ports import UnitOfWork
from orderly.testing import FakeUnitOfWork, InMemoryDatabase, ManualClock

TTL = timedelta(hours=24)
SCOPE = IdempotencyScope("alice", "POST", "/api/orders", "key-1")


class Boom(Exception):
    pass


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("abc-123", "abc-123"),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"with space"', "with space"),
        (r'"esc\"aped\\"', 'esc"aped\\'),
        ("  padded  ", "padded"),
        ("x" * 255, "x" * 255),
    ],
)
def test_parse_key_accepts_tokens_and_sf_strings(header: str, key: str) -> None:
    assert idempotency.parse_key(header) == key


@pytest.mark.parametrize(
    "header",
    ["", '""', "x" * 256, "has space", "caf\u00e9", '"tab\there"', '"bad\\escape"', 'a"b', '"a"b"'],
)
def test_parse_key_refuses_malformed(header: str) -> None:
    with pytest.raises(idempotency.KeyMalformed):
        idempotency.parse_key(header)


def test_parse_key_missing() -> None:
    with pytest.raises(idempotency.KeyMissing):
        idempotency.parse_key(None)


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=1, max_size=255))
def test_any_printable_token_round_trips_quoted_and_bare(key: str) -> None:
    assert idempotency.parse_key(key) == key
    assert idempotency.parse_key(f'"{key}"') == key


def test_fingerprint_ignores_key_order_and_whitespace_but_not_values() -> None:
    a = idempotency.fingerprint({"items": [{"sku": "A", "quantity": 1}], "paymentMethod": "x"})
    b = idempotency.fingerprint({"paymentMethod": "x", "items": [{"quantity": 1, "sku": "A"}]})
    c = idempotency.fingerprint({"paymentMethod": "x", "items": [{"quantity": 2, "sku": "A"}]})
    assert a == b
    assert a != c
    assert len(a) == 64


def _response(body: bytes) -> StoredResponse:
    return StoredResponse(202, (("content-type", "application/json"),), body)


async def _run(
    db: InMemoryDatabase, clock: ManualClock, fp: str, body: bytes
) -> tuple[idempotency.Outcome, list[str]]:
    calls: list[str] = []

    async def action(uow: UnitOfWork) -> ActionResult:
        calls.append(fp)
        return ActionResult(_response(body), "order-1", "PENDING")

    outcome = await idempotency.execute(
        lambda: FakeUnitOfWork(db), SCOPE, fp, action, clock=clock, ttl=TTL
    )
    return outcome, calls


async def test_first_request_runs_and_stores_then_replays() -> None:
    db, clock = InMemoryDatabase(), ManualClock()
    first, calls = await _run(db, clock, "fp", b"first")
    assert not first.replayed
    assert calls == ["fp"]
    second, calls = await _run(db, clock, "fp", b"second")
    assert second.replayed
    assert second.response.body == b"first"
    assert calls == []
    assert db.state.keys[SCOPE].resource_id == "order-1"
    assert db.state.keys[SCOPE].resource_status == "PENDING"


async def test_changed_body_is_refused() -> None:
    db, clock = InMemoryDatabase(), ManualClock()
    await _run(db, clock, "fp-a", b"a")
    with pytest.raises(idempotency.KeyReused):
        await _run(db, clock, "fp-b", b"b")


async def test_expired_key_runs_again() -> None:
    db, clock = InMemoryDatabase(), ManualClock()
    await _run(db, clock, "fp", b"old")
    clock.advance(TTL + timedelta(seconds=1))
    outcome, calls = await _run(db, clock, "fp-other", b"new")
    assert not outcome.replayed
    assert calls == ["fp-other"]


async def test_failed_action_stores_nothing_so_a_retry_runs() -> None:
    db, clock = InMemoryDatabase(), ManualClock()

    async def failing(uow: UnitOfWork) -> ActionResult:
        raise Boom()

    with pytest.raises(Boom):
        await idempotency.execute(
            lambda: FakeUnitOfWork(db), SCOPE, "fp", failing, clock=clock, ttl=TTL
        )
    assert SCOPE not in db.state.keys
    assert not db.held
    _, calls = await _run(db, clock, "fp", b"ok")
    assert calls == ["fp"]


async def test_concurrent_request_sees_in_flight() -> None:
    db, clock = InMemoryDatabase(), ManualClock()
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(uow: UnitOfWork) -> ActionResult:
        entered.set()
        await release.wait()
        return ActionResult(_response(b"slow"))

    first = asyncio.create_task(
        idempotency.execute(lambda: FakeUnitOfWork(db), SCOPE, "fp", slow, clock=clock, ttl=TTL)
    )
    await entered.wait()
    with pytest.raises(idempotency.RequestInFlight) as caught:
        await _run(db, clock, "fp", b"second")
    assert caught.value.retry_after >= 1
    release.set()
    assert (await first).response.body == b"slow"


async def test_purge_removes_only_expired_keys() -> None:
    db, clock = InMemoryDatabase(), ManualClock()
    await _run(db, clock, "fp", b"old")
    clock.advance(timedelta(hours=23))
    other = IdempotencyScope("bob", "POST", "/api/orders", "key-1")
    db.state.keys[other] = db.state.keys[SCOPE].__class__("fp", None, clock.now() + TTL, None, None)
    clock.advance(timedelta(hours=2))
    purged = await idempotency.purge_expired(lambda: FakeUnitOfWork(db), clock, batch=1)
    assert purged == 1
    assert list(db.state.keys) == [other]
