"""Bearer tokens follow the injected clock both when issued and when checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orderly.adapters.auth import JwtTokens
from orderly.services.ports import InvalidToken
from orderly.testing import ManualClock

START = datetime(2026, 1, 1, tzinfo=UTC)


def tokens(clock: ManualClock) -> JwtTokens:
    return JwtTokens("s" * 32, "orderly", timedelta(hours=1), clock)


def test_a_token_issued_on_a_clock_moved_ahead_is_valid_on_that_clock() -> None:
    clock = ManualClock(START)
    clock.advance(timedelta(days=30))
    issuer = tokens(clock)
    assert issuer.verify(issuer.issue("alice", "customer")) == ("alice", "customer")


def test_a_token_expires_when_the_clock_passes_its_lifetime() -> None:
    clock = ManualClock(START)
    issuer = tokens(clock)
    token = issuer.issue("alice", "admin")
    clock.advance(timedelta(minutes=59))
    assert issuer.verify(token) == ("alice", "admin")
    clock.advance(timedelta(minutes=1))
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_a_forged_token_is_refused() -> None:
    clock = ManualClock(START)
    token = tokens(clock).issue("alice", "customer")
    other = JwtTokens("x" * 32, "orderly", timedelta(hours=1), clock)
    with pytest.raises(InvalidToken):
        other.verify(token)


def test_a_verified_token_still_expires_on_time() -> None:
    clock = ManualClock(START)
    issuer = tokens(clock)
    token = issuer.issue("alice", "customer")
    for _ in range(3):
        assert issuer.verify(token) == ("alice", "customer")
    clock.advance(timedelta(hours=1))
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_a_forged_token_is_refused_every_time() -> None:
    clock = ManualClock(START)
    token = tokens(clock).issue("alice", "customer")
    other = JwtTokens("x" * 32, "orderly", timedelta(hours=1), clock)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            other.verify(token)


def test_the_verified_tokens_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orderly.adapters.auth.VERIFIED_TOKENS_KEPT", 3)
    clock = ManualClock(START)
    issuer = tokens(clock)
    issued = [issuer.issue(f"user-{i}", "customer") for i in range(5)]
    for i, token in enumerate(issued):
        assert issuer.verify(token) == (f"user-{i}", "customer")
    assert list(issuer._verified) == issued[2:]
    assert issuer.verify(issued[0]) == ("user-0", "customer")
    assert list(issuer._verified) == [*issued[3:], issued[0]]
