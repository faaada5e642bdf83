"""The payment gateway contract: one behavioural suite run against every gateway.

The simulated gateway runs in-process; the Stripe gateway runs against a local stand-in of
Stripe's API (tests/support/stripe_standin.py), which also lets the Stripe-only tests inject
server errors and dropped connections and see every request the gateway sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from orderly.adapters.payments.simulated import (
    DECLINE_MESSAGES,
    SimulatedGateway,
    intent_reference,
)
from orderly.adapters.payments.stripe_gateway import StripeGateway
from orderly.services.payments import (
    GatewayUnavailable,
    PaymentError,
    PaymentGateway,
    PaymentResult,
)
from tests.support.server import free_port
from tests.support.stripe_standin import API_KEY, FailureKind, StripeStandin

DECLINING_TEST_CARDS = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
}
AMOUNT = 1000

# stripe's HTTPXClient hands httpx the encoded form as ``data=<str>`` (stripe 16.1, httpx 0.28).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning"
)


@dataclass
class Subject:
    """A gateway under test, and the Stripe stand-in behind it (None for the simulated one)."""

    gateway: PaymentGateway
    standin: StripeStandin | None
    order_id: str

    def key(self, step: str) -> str:
        """An idempotency key derived from the order and step, as the saga derives them."""
        return f"order:{self.order_id}:{step}"

    async def authorize(
        self, step: str = "authorize", amount: int = AMOUNT, card: str = "pm_card_visa"
    ) -> PaymentResult:
        return await self.gateway.authorize(
            key=self.key(step),
            order_id=self.order_id,
            amount_minor=amount,
            currency="EUR",
            payment_method=card,
            customer_id="customer-1",
        )


@dataclass
class StripeSubject:
    """The Stripe gateway under test, with the stand-in it talks to."""

    subject: Subject
    gateway: StripeGateway
    standin: StripeStandin


@asynccontextmanager
async def gateway_subject(kind: str) -> AsyncIterator[Subject]:
    order_id = uuid.uuid4().hex
    if kind == "simulated":
        simulated = SimulatedGateway(seed=7)
        try:
            yield Subject(simulated, None, order_id)
        finally:
            await simulated.close()
        return
    async with StripeStandin() as standin:
        gateway = StripeGateway(API_KEY, api_base=standin.url, timeout=5.0)
        try:
            yield Subject(gateway, standin, order_id)
        finally:
            await gateway.close()


@pytest.fixture(params=["simulated", "stripe"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with gateway_subject(request.param) as subject:
        yield subject


@pytest.fixture
async def on_stripe() -> AsyncIterator[StripeSubject]:
    async with gateway_subject("stripe") as subject:
        assert isinstance(subject.gateway, StripeGateway)
        assert subject.standin is not None
        yield StripeSubject(subject, subject.gateway, subject.standin)


# --- the contract: every gateway ----------------------------------------------------------


async def test_authorize_approves_a_good_card(subject: Subject) -> None:
    result = await subject.authorize()

    assert result.ok
    assert result.reference
    assert result.amount_minor == AMOUNT
    assert result.decline_code is None


@pytest.mark.parametrize(("card", "decline_code"), DECLINING_TEST_CARDS.items())
async def test_test_cards_decline_with_their_code(
    subject: Subject, card: str, decline_code: str
) -> None:
    result = await subject.authorize(card=card)

    assert not result.ok
    assert result.decline_code == decline_code
    assert result.message
    assert result.amount_minor == AMOUNT


async def test_a_declined_authorization_cannot_be_captured(subject: Subject) -> None:
    declined = await subject.authorize(card="pm_card_chargeDeclined")
    assert declined.reference is not None

    with pytest.raises(PaymentError):
        await subject.gateway.capture(
            key=subject.key("capture"), reference=declined.reference, amount_minor=AMOUNT
        )


async def test_partial_capture_then_partial_refunds_up_to_the_captured_amount(
    subject: Subject,
) -> None:
    gateway = subject.gateway
    auth = await subject.authorize()
    assert auth.reference is not None

    capture = await gateway.capture(
        key=subject.key("capture"), reference=auth.reference, amount_minor=600
    )
    first = await gateway.refund(
        key=subject.key("refund-1"), reference=auth.reference, amount_minor=200
    )
    second = await gateway.refund(
        key=subject.key("refund-2"), reference=auth.reference, amount_minor=300
    )

    assert capture == PaymentResult(ok=True, reference=auth.reference, amount_minor=600)
    assert (first.ok, first.amount_minor, second.ok, second.amount_minor) == (True, 200, True, 300)
    assert first.reference
    assert second.reference
    assert len({auth.reference, first.reference, second.reference}) == 3
    with pytest.raises(PaymentError):
        await gateway.refund(
            key=subject.key("refund-3"), reference=auth.reference, amount_minor=101
        )
    rest = await gateway.refund(
        key=subject.key("refund-4"), reference=auth.reference, amount_minor=100
    )
    assert (rest.ok, rest.amount_minor) == (True, 100)


async def test_capture_repeated_with_the_same_key_acts_once(subject: Subject) -> None:
    auth = await subject.authorize()
    assert auth.reference is not None
    key = subject.key("capture")

    first = await subject.gateway.capture(key=key, reference=auth.reference, amount_minor=AMOUNT)
    again = await subject.gateway.capture(key=key, reference=auth.reference, amount_minor=AMOUNT)

    assert first == again == PaymentResult(ok=True, reference=auth.reference, amount_minor=AMOUNT)
    with pytest.raises(PaymentError):  # a second capture under another key is refused
        await subject.gateway.capture(
            key=subject.key("capture-again"), reference=auth.reference, amount_minor=AMOUNT
        )
    if subject.standin is not None:
        assert [r.outcome for r in subject.standin.seen("/capture")] == [
            "applied",
            "replayed",
            "applied",
        ]
        assert [r.status for r in subject.standin.seen("/capture")] == [200, 200, 400]


async def test_authorize_repeated_with_the_same_key_gets_the_same_reference(
    subject: Subject,
) -> None:
    first = await subject.authorize()
    again = await subject.authorize()

    assert first == again
    if subject.standin is not None:
        assert len(subject.standin.seen("/v1/payment_intents", "applied")) == 1
        assert len(subject.standin.intents) == 1


async def test_a_key_reused_for_another_request_is_refused(subject: Subject) -> None:
    await subject.authorize(amount=AMOUNT)

    with pytest.raises(PaymentError):
        await subject.authorize(amount=AMOUNT + 1)


async def test_capture_of_more_than_authorized_is_refused(subject: Subject) -> None:
    auth = await subject.authorize()
    assert auth.reference is not None

    with pytest.raises(PaymentError):
        await subject.gateway.capture(
            key=subject.key("capture"), reference=auth.reference, amount_minor=AMOUNT + 1
        )


async def test_void_releases_an_authorization(subject: Subject) -> None:
    auth = await subject.authorize()
    assert auth.reference is not None

    void = await subject.gateway.void(key=subject.key("void"), reference=auth.reference)

    assert void == PaymentResult(ok=True, reference=auth.reference, amount_minor=AMOUNT)
    with pytest.raises(PaymentError):
        await subject.gateway.capture(
            key=subject.key("capture"), reference=auth.reference, amount_minor=AMOUNT
        )


async def test_void_after_capture_is_refused(subject: Subject) -> None:
    auth = await subject.authorize()
    assert auth.reference is not None
    await subject.gateway.capture(
        key=subject.key("capture"), reference=auth.reference, amount_minor=AMOUNT
    )

    with pytest.raises(PaymentError):
        await subject.gateway.void(key=subject.key("void"), reference=auth.reference)


async def test_refund_before_capture_is_refused(subject: Subject) -> None:
    auth = await subject.authorize()
    assert auth.reference is not None

    with pytest.raises(PaymentError):
        await subject.gateway.refund(
            key=subject.key("refund"), reference=auth.reference, amount_minor=100
        )


async def test_an_unknown_reference_is_refused(subject: Subject) -> None:
    with pytest.raises(PaymentError):
        await subject.gateway.capture(
            key=subject.key("capture"), reference="pi_does_not_exist", amount_minor=AMOUNT
        )
    with pytest.raises(PaymentError):
        await subject.gateway.void(key=subject.key("void"), reference="pi_does_not_exist")


@pytest.mark.parametrize("amount", [0, -5])
async def test_a_non_positive_amount_is_refused(subject: Subject, amount: int) -> None:
    with pytest.raises(PaymentError):
        await subject.authorize(amount=amount)


# --- Stripe only --------------------------------------------------------------------------


async def test_stripe_sends_the_callers_key_and_stripes_parameters(
    on_stripe: StripeSubject,
) -> None:
    subject, gateway, standin = on_stripe.subject, on_stripe.gateway, on_stripe.standin
    auth = await subject.authorize()
    assert auth.reference is not None
    await gateway.capture(key=subject.key("capture"), reference=auth.reference, amount_minor=700)
    await gateway.refund(key=subject.key("refund"), reference=auth.reference, amount_minor=250)
    other = await subject.authorize(step="authorize-2")
    assert other.reference is not None
    await gateway.void(key=subject.key("void-2"), reference=other.reference)

    steps = ["authorize", "capture", "refund", "authorize-2", "void-2"]
    assert [r.idempotency_key for r in standin.requests] == [subject.key(s) for s in steps]
    create, capture, refund, _, cancel = standin.requests
    assert create.path == "/v1/payment_intents"
    assert create.form == {
        "amount": str(AMOUNT),
        "currency": "eur",
        "payment_method": "pm_card_visa",
        "capture_method": "manual",
        "confirm": "true",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[order_id]": subject.order_id,
        "metadata[customer_id]": "customer-1",
    }
    assert (capture.path, capture.form) == (
        f"/v1/payment_intents/{auth.reference}/capture",
        {"amount_to_capture": "700"},
    )
    assert (refund.path, refund.form) == (
        "/v1/refunds",
        {"payment_intent": auth.reference, "amount": "250"},
    )
    assert cancel.path == f"/v1/payment_intents/{other.reference}/cancel"


@pytest.mark.parametrize("kind", ["500", "429", "drop"])
async def test_stripe_failure_in_front_of_the_api_is_unavailable_and_the_retry_succeeds(
    on_stripe: StripeSubject, kind: FailureKind
) -> None:
    subject, standin = on_stripe.subject, on_stripe.standin
    standin.fail_next(1, kind=kind)

    with pytest.raises(GatewayUnavailable):
        await subject.authorize()
    retried = await subject.authorize()

    assert retried.ok
    assert [r.idempotency_key for r in standin.requests] == [subject.key("authorize")] * 2
    assert len(standin.intents) == 1


async def test_stripe_lost_response_is_replayed_on_retry_without_acting_twice(
    on_stripe: StripeSubject,
) -> None:
    subject, gateway, standin = on_stripe.subject, on_stripe.gateway, on_stripe.standin
    auth = await subject.authorize()
    assert auth.reference is not None
    standin.fail_next(1, kind="drop", after_effect=True)

    with pytest.raises(GatewayUnavailable):
        await gateway.capture(
            key=subject.key("capture"), reference=auth.reference, amount_minor=600
        )
    retried = await gateway.capture(
        key=subject.key("capture"), reference=auth.reference, amount_minor=600
    )

    assert retried == PaymentResult(ok=True, reference=auth.reference, amount_minor=600)
    assert [r.outcome for r in standin.seen("/capture")] == ["dropped", "replayed"]


async def test_stripe_connection_refused_is_unavailable() -> None:
    gateway = StripeGateway(API_KEY, api_base=f"http://127.0.0.1:{free_port()}", timeout=2.0)
    try:
        with pytest.raises(GatewayUnavailable):
            await gateway.authorize(
                key="k",
                order_id="o",
                amount_minor=AMOUNT,
                currency="eur",
                payment_method="pm_card_visa",
                customer_id="c",
            )
    finally:
        await gateway.close()


async def test_stripe_rejected_api_key_is_a_payment_error(
    on_stripe: StripeSubject,
) -> None:
    gateway = StripeGateway("rk_live_wrong", api_base=on_stripe.standin.url)
    try:
        with pytest.raises(PaymentError):
            await gateway.void(key="k", reference="pi_x")
    finally:
        await gateway.close()


async def test_stripe_card_needing_authentication_is_a_decline(
    on_stripe: StripeSubject,
) -> None:
    result = await on_stripe.subject.authorize(card="pm_card_authenticationRequired")

    assert not result.ok
    assert result.decline_code == "authentication_required"
    assert result.reference in on_stripe.standin.intents


# --- simulated only -----------------------------------------------------------------------


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def simulated(**kwargs: object) -> SimulatedGateway:
    return SimulatedGateway(**kwargs)  # type: ignore[arg-type]


async def authorize_many(
    gateway: SimulatedGateway, count: int, card: str = "pm_simulated"
) -> list[PaymentResult]:
    return [
        await gateway.authorize(
            key=f"order:{n}:authorize",
            order_id=str(n),
            amount_minor=AMOUNT,
            currency="eur",
            payment_method=card,
            customer_id="c",
        )
        for n in range(count)
    ]


async def test_simulated_latency_is_drawn_from_the_range() -> None:
    sleep = RecordingSleep()
    gateway = SimulatedGateway(latency_ms=(50, 60), sleep=sleep)

    results = await authorize_many(gateway, 5)
    await gateway.capture(key="cap", reference=str(results[0].reference), amount_minor=1)
    await gateway.void(key="void", reference=str(results[1].reference))
    await gateway.refund(key="ref", reference=str(results[0].reference), amount_minor=1)

    assert len(sleep.delays) == 8
    assert all(0.050 <= d <= 0.060 for d in sleep.delays)


async def test_simulated_latency_really_waits() -> None:
    gateway = SimulatedGateway(latency_ms=(50, 60))

    started = time.monotonic()
    await authorize_many(gateway, 1)

    assert time.monotonic() - started >= 0.050


async def test_simulated_decline_rate_one_declines_every_card_but_test_cards() -> None:
    gateway = SimulatedGateway(decline_rate=1.0, seed=3)

    declined = await authorize_many(gateway, 40)
    approved = await authorize_many(SimulatedGateway(decline_rate=1.0), 5, card="pm_card_visa")

    assert not any(r.ok for r in declined)
    assert {r.decline_code for r in declined} == set(DECLINE_MESSAGES)
    assert all(r.message == DECLINE_MESSAGES[str(r.decline_code)] for r in declined)
    assert all(r.ok for r in approved)


async def test_simulated_decline_rate_zero_declines_nothing() -> None:
    results = await authorize_many(SimulatedGateway(decline_rate=0.0), 40)

    assert all(r.ok for r in results)


async def test_simulated_outcomes_are_the_same_in_every_instance_with_the_seed() -> None:
    first = await authorize_many(SimulatedGateway(decline_rate=0.5, seed=11), 60)
    second = await authorize_many(SimulatedGateway(decline_rate=0.5, seed=11), 60)
    other_seed = await authorize_many(SimulatedGateway(decline_rate=0.5, seed=12), 60)

    assert first == second
    assert 10 < sum(r.ok for r in first) < 50
    assert [r.ok for r in first] != [r.ok for r in other_seed]
    assert all(r.reference == intent_reference(f"order:{n}:authorize") for n, r in enumerate(first))


async def test_simulated_adopts_a_reference_authorized_by_another_process() -> None:
    authorizing, capturing = SimulatedGateway(), SimulatedGateway()
    [auth] = await authorize_many(authorizing, 1)
    assert auth.reference is not None

    capture = await capturing.capture(key="cap", reference=auth.reference, amount_minor=700)
    refund = await capturing.refund(key="ref", reference=auth.reference, amount_minor=700)

    assert (capture.ok, capture.amount_minor, refund.ok) == (True, 700, True)
    with pytest.raises(PaymentError):
        await capturing.refund(key="ref-2", reference=auth.reference, amount_minor=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"latency_ms": (10, 5)}, {"latency_ms": (-1, 5)}, {"decline_rate": 1.5}],
)
async def test_simulated_refuses_nonsense_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        simulated(**kwargs)
