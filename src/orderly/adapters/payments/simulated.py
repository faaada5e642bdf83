"""A simulated card gateway: no network, configurable latency and decline rate.

Outcomes are a pure function of (seed, idempotency key, payment method), and references a pure
function of the key, so a retry with the same key gets the same answer and the same reference
even in another process. Stripe's test payment methods force outcomes, so the same test cards
work here and against Stripe: ``pm_card_visa`` approves, ``pm_card_chargeDeclined*`` decline.

State (authorized, captured, refunded, voided) lives in this process only. A reference that
this process has never seen but that follows the simulated naming (``pi_sim_`` + 24 hex digits)
was most likely authorized by another worker process, so it is adopted rather than refused:
capture treats it as authorized for the amount asked, refund as captured for the amount asked,
and void releases it (reporting 0, as the authorized amount is unknown here). Any other
unknown reference is a ``PaymentError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from orderly.services.payments import PaymentError, PaymentResult

DECLINE_MESSAGES: dict[str, str] = {
    "card_declined": "Transaction declined by issuing bank",
    "insufficient_funds": "Insufficient funds",
    "expired_card": "Card expired",
    "fraudulent": "Suspected fraud — transaction blocked",
}
"""Decline codes and the sentence shown for each (seed 003)."""

TEST_CARD_DECLINES: dict[str, str] = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
}
"""Stripe's test payment methods that always decline, and the code they decline with."""

APPROVING_TEST_CARDS = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex"})
"""Stripe's test payment methods that always approve, whatever the decline rate."""

INTENT_PREFIX = "pi_sim_"
REFUND_PREFIX = "re_sim_"
_DIGEST_CHARS = 24
_SIMULATED_REFERENCE = re.compile(rf"{INTENT_PREFIX}[0-9a-f]{{{_DIGEST_CHARS}}}")
_DECLINE_REASONS = tuple(DECLINE_MESSAGES)

Sleep = Callable[[float], Awaitable[None]]


def intent_reference(key: str) -> str:
    """The PaymentIntent id an authorization with ``key`` gets, in every process."""
    return INTENT_PREFIX + _digest_hex(key)


def refund_reference(key: str) -> str:
    """The refund id a refund with ``key`` gets, in every process."""
    return REFUND_PREFIX + _digest_hex(key)


def _digest_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:_DIGEST_CHARS]


class _Status(Enum):
    DECLINED = "declined"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    VOIDED = "voided"


@dataclass
class _Intent:
    amount: int
    status: _Status
    captured: int = 0
    refunded: int = 0


class SimulatedGateway:
    """An in-process ``PaymentGateway`` (see the module docstring for its rules)."""

    name = "simulated"

    def __init__(
        self,
        latency_ms: tuple[int, int] = (0, 0),
        decline_rate: float = 0.0,
        seed: int = 0,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        low, high = latency_ms
        if not 0 <= low <= high:
            raise ValueError(f"latency_ms must be (low, high) with 0 <= low <= high: {latency_ms}")
        if not 0.0 <= decline_rate <= 1.0:
            raise ValueError(f"decline_rate must be between 0 and 1: {decline_rate}")
        self._latency_ms = (low, high)
        self._decline_rate = decline_rate
        self._seed = seed
        self._sleep = sleep
        self._latency_random = random.Random(seed)
        self._intents: dict[str, _Intent] = {}
        # key -> (the request it was first used with, the result it got)
        self._outcomes: dict[str, tuple[tuple[object, ...], PaymentResult]] = {}

    async def authorize(
        self,
        *,
        key: str,
        order_id: str,
        amount_minor: int,
        currency: str,
        payment_method: str,
        customer_id: str,
    ) -> PaymentResult:
        await self._delay()
        request = (
            "authorize",
            order_id,
            amount_minor,
            currency.lower(),
            payment_method,
            customer_id,
        )
        if (replayed := self._replay(key, request)) is not None:
            return replayed
        _check_amount(amount_minor)
        if not (len(currency) == 3 and currency.isalpha()):
            raise PaymentError(f"invalid currency: {currency!r}")
        reference = intent_reference(key)
        decline_code = self._decline_code(key, payment_method)
        if decline_code is None:
            self._intents[reference] = _Intent(amount_minor, _Status.AUTHORIZED)
            result = PaymentResult(ok=True, reference=reference, amount_minor=amount_minor)
        else:
            self._intents[reference] = _Intent(amount_minor, _Status.DECLINED)
            result = PaymentResult(
                ok=False,
                reference=reference,
                amount_minor=amount_minor,
                decline_code=decline_code,
                message=DECLINE_MESSAGES[decline_code],
            )
        return self._remember(key, request, result)

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        await self._delay()
        request = ("capture", reference, amount_minor)
        if (replayed := self._replay(key, request)) is not None:
            return replayed
        _check_amount(amount_minor)
        intent = self._intent(reference, adopted=_Intent(amount_minor, _Status.AUTHORIZED))
        if intent.status is not _Status.AUTHORIZED:
            raise PaymentError(f"cannot capture {reference}: it is {intent.status.value}")
        if amount_minor > intent.amount:
            raise PaymentError(
                f"cannot capture {amount_minor} on {reference}: only {intent.amount} authorized"
            )
        intent.status = _Status.CAPTURED
        intent.captured = amount_minor
        result = PaymentResult(ok=True, reference=reference, amount_minor=amount_minor)
        return self._remember(key, request, result)

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        await self._delay()
        request = ("void", reference)
        if (replayed := self._replay(key, request)) is not None:
            return replayed
        intent = self._intent(reference, adopted=_Intent(0, _Status.AUTHORIZED))
        if intent.status not in (_Status.AUTHORIZED, _Status.DECLINED):
            raise PaymentError(f"cannot void {reference}: it is {intent.status.value}")
        intent.status = _Status.VOIDED
        result = PaymentResult(ok=True, reference=reference, amount_minor=intent.amount)
        return self._remember(key, request, result)

    async def refund(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        await self._delay()
        request = ("refund", reference, amount_minor)
        if (replayed := self._replay(key, request)) is not None:
            return replayed
        _check_amount(amount_minor)
        adopted = _Intent(amount_minor, _Status.CAPTURED, captured=amount_minor)
        intent = self._intent(reference, adopted=adopted)
        if intent.status is not _Status.CAPTURED:
            raise PaymentError(f"cannot refund {reference}: it is {intent.status.value}")
        refundable = intent.captured - intent.refunded
        if amount_minor > refundable:
            raise PaymentError(
                f"cannot refund {amount_minor} on {reference}: only {refundable} left to refund"
            )
        intent.refunded += amount_minor
        result = PaymentResult(ok=True, reference=refund_reference(key), amount_minor=amount_minor)
        return self._remember(key, request, result)

    async def close(self) -> None:
        return None

    async def _delay(self) -> None:
        low, high = self._latency_ms
        await self._sleep(self._latency_random.uniform(low, high) / 1000)

    def _replay(self, key: str, request: tuple[object, ...]) -> PaymentResult | None:
        seen = self._outcomes.get(key)
        if seen is None:
            return None
        first_request, result = seen
        if first_request != request:
            raise PaymentError(
                f"idempotency key {key!r} was first used for a different request: "
                f"{first_request[0]} {first_request[1:]}"
            )
        return result

    def _remember(
        self, key: str, request: tuple[object, ...], result: PaymentResult
    ) -> PaymentResult:
        self._outcomes[key] = (request, result)
        return result

    def _intent(self, reference: str, *, adopted: _Intent) -> _Intent:
        intent = self._intents.get(reference)
        if intent is not None:
            return intent
        if not _SIMULATED_REFERENCE.fullmatch(reference):
            raise PaymentError(f"no such payment: {reference!r}")
        self._intents[reference] = adopted
        return adopted

    def _decline_code(self, key: str, payment_method: str) -> str | None:
        """None to approve, else the decline code: forced by a test card, otherwise drawn."""
        if payment_method in APPROVING_TEST_CARDS:
            return None
        if payment_method in TEST_CARD_DECLINES:
            return TEST_CARD_DECLINES[payment_method]
        digest = hashlib.sha256(f"{self._seed}:{key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= self._decline_rate:
            return None
        return _DECLINE_REASONS[digest[8] % len(_DECLINE_REASONS)]


def _check_amount(amount_minor: int) -> None:
    if amount_minor <= 0:
        raise PaymentError(f"amount must be a positive number of minor units: {amount_minor}")
