"""The Idempotency-Key component: header rules, fingerprints and the claim-act-store cycle.

Follows the IETF draft "The Idempotency-Key HTTP Header Field" and Stripe's behaviour. The
claim, the action and the stored response share one transaction: a request that fails stores
nothing, so the client may simply retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson

from orderly.services.idempotency_types import (
    Claimed,
    Existing,
    IdempotencyScope,
    InFlight,
    StoredResponse,
)
from orderly.services.ports import Clock, UnitOfWork, UnitOfWorkFactory

MAX_KEY_LENGTH = 255
IN_FLIGHT_RETRY_AFTER_SECONDS = 1


class IdempotencyError(Exception):
    """Base of the errors a client can cause with the Idempotency-Key header."""


class KeyMissing(IdempotencyError):
    def __init__(self) -> None:
        super().__init__("this request needs an Idempotency-Key header")


class KeyMalformed(IdempotencyError):
    pass


class KeyReused(IdempotencyError):
    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a new request"
        )


class RequestInFlight(IdempotencyError):
    retry_after = IN_FLIGHT_RETRY_AFTER_SECONDS

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still being processed; retry shortly"
        )


def parse_key(header: str | None) -> str:
    """Return the key from an ``Idempotency-Key`` header value.

    Accepts the structured-field string form (``"abc"``, with ``\\"`` and ``\\\\`` escapes)
    and a bare token. Keys are 1 to 255 printable ASCII characters.
    """
    if header is None:
        raise KeyMissing()
    value = header.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _unquote_sf_string(value[1:-1])
    elif any(c in value for c in '" \t'):
        raise KeyMalformed("an unquoted Idempotency-Key may not contain spaces or quotes")
    if not value:
        raise KeyMalformed("the Idempotency-Key is empty")
    if len(value) > MAX_KEY_LENGTH:
        raise KeyMalformed(f"the Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    if not all(" " <= c <= "~" for c in value):
        raise KeyMalformed("the Idempotency-Key must be printable ASCII")
    return value


def _unquote_sf_string(inner: str) -> str:
    out: list[str] = []
    chars = iter(inner)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            if nxt not in ('"', "\\"):
                raise KeyMalformed("bad escape in the quoted Idempotency-Key")
            out.append(nxt)
        elif c == '"':
            raise KeyMalformed("unescaped quote in the quoted Idempotency-Key")
        else:
            out.append(c)
    return "".join(out)


def fingerprint(parsed_body: Any) -> str:
    """SHA-256 of the body's canonical JSON (sorted keys, no insignificant whitespace)."""
    canonical = orjson.dumps(parsed_body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an idempotent action answered, and the resource whose fate the key follows."""

    response: StoredResponse
    resource_id: str | None = None
    resource_status: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    response: StoredResponse
    replayed: bool


Action = Callable[[UnitOfWork], Awaitable[ActionResult]]


async def execute(
    uow_factory: UnitOfWorkFactory,
    scope: IdempotencyScope,
    body_fingerprint: str,
    action: Action,
    *,
    clock: Clock,
    ttl: timedelta,
) -> Outcome:
    """Run ``action`` at most once per scope; replay its stored response afterwards.

    Raises ``KeyReused`` for a changed body and ``RequestInFlight`` while the first request's
    transaction is still open. Exceptions from ``action`` roll everything back.
    """
    now = clock.now()
    async with uow_factory() as uow:
        claim = await uow.idempotency.claim(scope, body_fingerprint, now, now + ttl)
        if isinstance(claim, InFlight):
            raise RequestInFlight()
        if isinstance(claim, Existing):
            record = claim.record
            if record.fingerprint != body_fingerprint:
                raise KeyReused()
            if record.response is None:
                raise RequestInFlight()
            return Outcome(record.response, replayed=True)
        assert isinstance(claim, Claimed)
        result = await action(uow)
        await uow.idempotency.complete(
            scope, result.response, result.resource_id, result.resource_status
        )
        await uow.commit()
        return Outcome(result.response, replayed=False)


async def purge_expired(uow_factory: UnitOfWorkFactory, clock: Clock, batch: int = 1000) -> int:
    """Delete every expired key, ``batch`` rows per transaction; return how many went."""
    purged = 0
    while True:
        async with uow_factory() as uow:
            count = await uow.idempotency.purge_expired(clock.now(), batch)
            await uow.commit()
        purged += count
        if count < batch:
            return purged
