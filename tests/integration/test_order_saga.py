"""The order saga end to end, in one process, on SQLite and the real PostgreSQL.

Orders go in through the API; the real consumer runtime runs every service of the saga on the
local transport. Each failure path must undo exactly the steps that finished, in reverse, and
leave the stock ledger balanced; the idempotency record follows the order to its outcome.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from orderly.adapters.db.tables import outbox_messages
from orderly.adapters.payments.simulated import DECLINE_MESSAGES, SimulatedGateway
from orderly.services.order_saga import ALERT_NEEDS_ATTENTION, NOTIFY_OUTCOME, OrderConflict
from orderly.services.order_steps import PAYMENT, WAREHOUSE, _fails, warehouse_handler
from orderly.services.payments import GatewayUnavailable, PaymentResult
from tests.conftest import Backend
from tests.support.saga import DelegatingGateway, OrderRow, SagaHarness, saga_harness

pytestmark = pytest.mark.timeout(120)

# Step indexes of the order saga.
AUTHORIZE, FULFIL = 2, 3
HEADPHONES = 4999  # PROD-001
HUB = 2999  # PROD-003

PLACED = ["order.placed", "order.processing_started"]
CONFIRMED_EVENTS = [
    *PLACED,
    "order.reserved",
    "order.payment_authorized",
    "order.fulfilling",
    "order.shipped",
    "order.payment_captured",
    "order.confirmed",
]


async def finished(h: SagaHarness, order: OrderRow) -> None:
    """What every settled order owes: its key follows it and the ledger balances."""
    assert await h.key_status(order.id) == order.status
    await h.ledger_balances()


# ---- seed 003's three scenarios ----------------------------------------------------------------


async def test_an_order_in_stock_is_reserved_authorized_shipped_captured_and_confirmed(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        async with h.running():
            order_id = await h.place({"PROD-001": 2})
            order = await h.settle(order_id)
            await h.wait_until(
                lambda: _sent(h, NOTIFY_OUTCOME, order_id), "the outcome notification"
            )

        assert (order.status, order.failure_reason) == ("CONFIRMED", None)
        assert await h.event_types(order_id) == CONFIRMED_EVENTS
        payment = await h.payment(order_id)
        assert payment is not None
        assert (payment.status, payment.authorized_minor, payment.captured_minor) == (
            "CAPTURED",
            2 * HEADPHONES,
            2 * HEADPHONES,
        )
        assert await h.payment_operations(order_id) == [
            ("authorize", True, 2 * HEADPHONES),
            ("capture", True, 2 * HEADPHONES),
        ]
        [shipment] = await h.shipments(order_id)
        assert (shipment.warehouse_id, shipment.status, shipment.value_minor) == (
            "WH-AUS",
            "SHIPPED",
            2 * HEADPHONES,
        )
        assert await h.stock_levels("PROD-001") == {"WH-AUS": (8, 0), "WH-NYC": (5, 0)}
        assert await h.compensated_steps(order_id) == []
        await finished(h, order)


async def test_an_out_of_stock_order_fails_without_touching_payment_or_stock(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        before = await h.all_stock()
        async with h.running():
            order = await h.settle(await h.place({"PROD-002": 1}))

        assert (order.status, order.failure_reason) == ("FAILED", "OUT_OF_STOCK")
        assert await h.event_types(order.id) == [*PLACED, "order.step_failed", "order.failed"]
        assert await h.payment_operations(order.id) == []
        assert await h.payment(order.id) is None
        assert await h.all_stock() == before
        assert await h.compensated_steps(order.id) == []
        await finished(h, order)


async def test_a_multi_item_order_splits_a_line_across_warehouses_and_captures_it_all(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        # No warehouse can ship both headphones: one comes from each.
        await h.set_stock("PROD-001", "WH-AUS", 1)
        await h.set_stock("PROD-001", "WH-NYC", 1)
        async with h.running():
            order = await h.settle(await h.place({"PROD-001": 2, "PROD-003": 1}))

        total = 2 * HEADPHONES + HUB
        assert (order.status, order.total_minor) == ("CONFIRMED", total)
        assert await h.event_types(order.id) == CONFIRMED_EVENTS
        shipments = {s.warehouse_id: s for s in await h.shipments(order.id)}
        assert {w: s.status for w, s in shipments.items()} == {
            "WH-AUS": "SHIPPED",
            "WH-NYC": "SHIPPED",
        }
        assert sorted((x["sku"], x["quantity"]) for x in shipments["WH-AUS"].lines) == [
            ("PROD-001", 1),
            ("PROD-003", 1),
        ]
        assert [(x["sku"], x["quantity"]) for x in shipments["WH-NYC"].lines] == [("PROD-001", 1)]
        assert shipments["WH-AUS"].value_minor + shipments["WH-NYC"].value_minor == total
        payment = await h.payment(order.id)
        assert payment is not None
        assert (payment.status, payment.captured_minor) == ("CAPTURED", total)
        assert await h.stock_levels("PROD-001") == {"WH-AUS": (0, 0), "WH-NYC": (0, 0)}
        assert await h.stock_levels("PROD-003") == {"WH-AUS": (19, 0), "WH-NYC": (10, 0)}
        await finished(h, order)


# ---- failures: each compensates exactly the finished steps, in reverse -------------------------


async def test_a_reservation_that_fails_on_its_second_line_holds_nothing_and_undoes_nothing(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        before = await h.all_stock()
        async with h.running():
            order = await h.settle(await h.place({"PROD-003": 5, "PROD-001": 16}))

        assert (order.status, order.failure_reason) == ("FAILED", "OUT_OF_STOCK")
        assert await h.compensated_steps(order.id) == []
        assert await h.all_stock() == before
        assert await h.payment_operations(order.id) == []
        await finished(h, order)


async def test_a_fraud_rejection_releases_the_reservation_and_never_calls_the_gateway(
    backend: Backend,
) -> None:
    async with saga_harness(backend, fraud_reject_above_minor=5_000) as h:
        before = await h.all_stock()
        async with h.running():
            order = await h.settle(await h.place({"PROD-001": 2}))

        assert (order.status, order.failure_reason) == ("FAILED", "FRAUD_REJECTED")
        assert await h.event_types(order.id) == [
            *PLACED,
            "order.reserved",
            "order.step_failed",
            "order.compensation_started",
            "order.step_compensated",
            "order.failed",
        ]
        assert await h.compensated_steps(order.id) == ["reserve"]
        assert await h.payment_operations(order.id) == []
        assert await h.all_stock() == before
        await finished(h, order)


async def held_for_review(h: SagaHarness, items: dict[str, int]) -> str:
    order_id = await h.place(items)

    async def held() -> bool:
        return (await h.order(order_id)).status == "HELD_FOR_REVIEW"

    await h.wait_until(held, f"order {order_id} held for review")
    return order_id


async def test_a_reviewed_order_that_an_admin_approves_is_confirmed(backend: Backend) -> None:
    async with saga_harness(backend, fraud_review_above_minor=5_000) as h:
        async with h.running():
            order_id = await held_for_review(h, {"PROD-001": 2})
            assert await h.payment_operations(order_id) == []
            await h.decide_review(order_id, approve=True)
            order = await h.settle(order_id)

        assert order.status == "CONFIRMED"
        events = await h.event_types(order.id)
        assert events == [*CONFIRMED_EVENTS[:3], "order.held_for_review", *CONFIRMED_EVENTS[3:]]
        review = await h.fraud_review(order.id)
        assert (review.status, review.decided_by) == ("APPROVED", "ops")
        assert await h.stock_levels("PROD-001") == {"WH-AUS": (8, 0), "WH-NYC": (5, 0)}
        await finished(h, order)


async def test_a_reviewed_order_that_an_admin_rejects_fails_and_releases_its_stock(
    backend: Backend,
) -> None:
    async with saga_harness(backend, fraud_review_above_minor=5_000) as h:
        before = await h.all_stock()
        async with h.running():
            order_id = await held_for_review(h, {"PROD-001": 2})
            await h.decide_review(order_id, approve=False)
            order = await h.settle(order_id)

        assert (order.status, order.failure_reason) == ("FAILED", "FRAUD_REJECTED")
        assert await h.compensated_steps(order.id) == ["reserve"]
        assert await h.payment_operations(order.id) == []
        assert (await h.fraud_review(order.id)).status == "REJECTED"
        assert await h.all_stock() == before
        await finished(h, order)


async def test_a_review_nobody_decides_expires_and_the_order_fails_as_fraud_rejected(
    backend: Backend,
) -> None:
    async with saga_harness(
        backend, fraud_review_above_minor=5_000, review_timeout_seconds=600
    ) as h:
        before = await h.all_stock()
        async with h.running():
            order_id = await held_for_review(h, {"PROD-001": 2})
            assert await h.sweep() == 0, "nothing is due yet"
            h.clock.advance(timedelta(seconds=601))
            assert await h.sweep() == 1
            order = await h.settle(order_id)

        assert (order.status, order.failure_reason) == ("FAILED", "FRAUD_REJECTED")
        assert "order.review_expired" in await h.event_types(order.id)
        assert await h.compensated_steps(order.id) == ["reserve"]
        assert (await h.fraud_review(order.id)).status == "EXPIRED"
        assert await h.payment_operations(order.id) == []
        assert await h.all_stock() == before
        await finished(h, order)


DECLINING_CARDS = {
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
}


async def test_every_declining_card_fails_the_order_and_releases_its_reservation(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        before = await h.all_stock()
        async with h.running():
            placed = {card: await h.place({"PROD-003": 1}, card) for card in DECLINING_CARDS}
            orders = {card: await h.settle(order_id) for card, order_id in placed.items()}

        for card, order in orders.items():
            assert (order.status, order.failure_reason) == ("FAILED", "PAYMENT_DECLINED"), card
            payment = await h.payment(order.id)
            assert payment is not None
            code = DECLINING_CARDS[card]
            assert (payment.status, payment.decline_code, payment.message) == (
                "DECLINED",
                code,
                DECLINE_MESSAGES[code],
            )
            assert await h.payment_operations(order.id) == [("authorize", False, HUB)]
            assert await h.compensated_steps(order.id) == ["reserve"]
            assert await h.shipments(order.id) == []
            await finished(h, order)
        assert await h.all_stock() == before


async def test_a_warehouse_that_cannot_ship_voids_the_authorization_and_releases_the_stock(
    backend: Backend,
) -> None:
    async with saga_harness(backend, warehouse_failure_rate=1.0) as h:
        before = await h.all_stock()
        async with h.running():
            order = await h.settle(await h.place({"PROD-001": 2}))

        assert (order.status, order.failure_reason) == ("FAILED", "PROCESSING_ERROR")
        # Fulfilment may fail half-way, so its own compensation runs first (nothing shipped).
        assert await h.compensated_steps(order.id) == ["fulfil", "authorize", "reserve"]
        assert await h.payment_operations(order.id) == [
            ("authorize", True, 2 * HEADPHONES),
            ("void", True, 2 * HEADPHONES),
        ]
        payment = await h.payment(order.id)
        assert (payment.status, payment.captured_minor) == ("VOIDED", 0)
        assert [s.status for s in await h.shipments(order.id)] == ["FAILED"]
        assert await h.all_stock() == before
        await finished(h, order)


async def test_when_one_of_two_shipments_fails_the_one_that_shipped_comes_back(
    backend: Backend,
) -> None:
    """A partly shipped order that fails must not lose the units that did ship."""
    async with saga_harness(backend) as h:
        await h.set_stock("PROD-001", "WH-AUS", 1)
        await h.set_stock("PROD-001", "WH-NYC", 1)
        before = await h.all_stock()
        order_id = await h.place({"PROD-001": 2})  # one unit from each warehouse
        settings = replace(h.container.step_settings(), warehouse_failure_rate=0.5)
        settings = next(
            s
            for s in (replace(settings, warehouse_seed=seed) for seed in range(1000))
            if [_fails(s, f"{order_id}:{w}") for w in ("WH-AUS", "WH-NYC")] == [False, True]
        )
        c = h.container
        warehouse = warehouse_handler(settings, clock=c.clock, ids=c.ids, policy=c.retry_policy)
        async with h.running(replace=[warehouse]):
            order = await h.settle(order_id)

        assert (order.status, order.failure_reason) == ("FAILED", "PROCESSING_ERROR")
        payment = await h.payment(order.id)
        assert (payment.status, payment.captured_minor) == ("VOIDED", 0)
        shipped = [s.warehouse_id for s in await h.shipments(order.id) if s.status == "SHIPPED"]
        assert shipped == [], f"shipments of a failed order still count as shipped: {shipped}"
        assert await h.all_stock() == before, "the units shipped from WH-AUS were never returned"
        await finished(h, order)


class DecliningCaptures(DelegatingGateway):
    """Authorizes and voids normally; every capture is declined."""

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        return PaymentResult(
            ok=False,
            reference=reference,
            amount_minor=amount_minor,
            decline_code="card_declined",
            message=DECLINE_MESSAGES["card_declined"],
        )


async def test_a_declined_capture_returns_the_shipments_to_stock_and_voids_the_authorization(
    backend: Backend,
) -> None:
    async with saga_harness(backend, gateway=DecliningCaptures(SimulatedGateway())) as h:
        before = await h.all_stock()
        async with h.running():
            order = await h.settle(await h.place({"PROD-001": 2}))

        assert (order.status, order.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
        assert await h.compensated_steps(order.id) == ["fulfil", "authorize", "reserve"]
        assert await h.payment_operations(order.id) == [
            ("authorize", True, 2 * HEADPHONES),
            ("capture", False, 2 * HEADPHONES),
            ("void", True, 2 * HEADPHONES),
        ]
        payment = await h.payment(order.id)
        assert (payment.status, payment.captured_minor) == ("VOIDED", 0)
        assert [s.status for s in await h.shipments(order.id)] == ["RETURNED"]
        assert await h.all_stock() == before
        await finished(h, order)


async def test_a_reservation_that_expires_during_review_fails_the_order_and_frees_the_stock(
    backend: Backend,
) -> None:
    async with saga_harness(
        backend,
        fraud_review_above_minor=5_000,
        review_timeout_seconds=600,
        reservation_ttl_seconds=300,
    ) as h:
        before = await h.all_stock()
        async with h.running():
            order_id = await held_for_review(h, {"PROD-001": 2})
            assert await h.stock_levels("PROD-001") == {"WH-AUS": (10, 2), "WH-NYC": (5, 0)}
            h.clock.advance(timedelta(seconds=301))
            assert await h.sweep() == 1
            order = await h.settle(order_id)

        assert (order.status, order.failure_reason) == ("FAILED", "RESERVATION_EXPIRED")
        assert "order.interrupted" in await h.event_types(order.id)
        assert await h.compensated_steps(order.id) == ["reserve"]
        assert await h.payment_operations(order.id) == []
        assert await h.all_stock() == before
        await finished(h, order)


async def test_a_step_that_never_answers_times_out_and_its_effects_are_undone(
    backend: Backend,
) -> None:
    async with saga_harness(backend, step_timeout_seconds=30) as h:
        before = await h.all_stock()
        async with h.running(exclude=[PAYMENT]):  # the payment service is down
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, AUTHORIZE)
        h.clock.advance(timedelta(seconds=31))
        assert await h.sweep() == 1
        async with h.running():  # it comes back: the stale authorize, then the blind void
            order = await h.settle(order_id)
            await h.wait_until(lambda: _all_sent(h, order_id), "every command answered")

        assert (order.status, order.failure_reason) == ("FAILED", "PROCESSING_ERROR")
        assert "order.step_timed_out" in await h.event_types(order.id)
        assert await h.compensated_steps(order.id) == ["authorize", "reserve"]
        assert await h.all_stock() == before
        payment = await h.payment(order.id)
        assert payment is None or payment.status == "VOIDED", (
            f"a failed order keeps an authorization hold: {payment and payment.status}, "
            f"operations {await h.payment_operations(order.id)}"
        )
        await finished(h, order)


async def test_a_command_the_broker_lost_is_sent_again_and_the_order_completes(
    backend: Backend,
) -> None:
    """A broker that loses a confirmed message (seen with NATS stopped while messages arrive)
    must not fail the order: within the step's timeout the saga sends the command again."""
    async with saga_harness(backend, step_timeout_seconds=30) as h:
        async with h.running(exclude=[PAYMENT]):
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, AUTHORIZE)
        [lost] = await h.outbox("payment.authorize", order_id)
        async with h.container.engine.begin() as conn:  # the broker lost it
            await conn.execute(outbox_messages.delete().where(outbox_messages.c.id == lost.id))
        h.clock.advance(timedelta(seconds=11))  # a third of the step's timeout
        assert await h.sweep() == 1
        async with h.running():
            order = await h.settle(order_id)
        assert order.status == "CONFIRMED"
        assert await h.saga_log(order_id, "step.resent") == [("step.resent", "authorize")]
        [again] = await h.outbox("payment.authorize", order_id)
        assert again.message_id != lost.message_id
        assert (await h.payment(order_id)).status == "CAPTURED"
        await finished(h, order)


async def test_a_lost_order_to_ship_is_given_again_by_the_resent_fulfil_command(
    backend: Backend,
) -> None:
    """The fulfil command ran and made the shipment, but the broker lost the warehouse's order
    to ship it. The fulfil command sent again finds the shipment still requested and asks the
    warehouse again; the order completes."""
    async with saga_harness(backend, fulfilment_timeout_seconds=30) as h:
        async with h.running(exclude=[WAREHOUSE]):
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, FULFIL)
            await h.wait_until(
                lambda: _has(h, "warehouse.ship", order_id), "the order to ship is written"
            )
        [lost] = await h.outbox("warehouse.ship", order_id)
        async with h.container.engine.begin() as conn:  # the broker lost it
            await conn.execute(outbox_messages.delete().where(outbox_messages.c.id == lost.id))
        h.clock.advance(timedelta(seconds=11))
        assert await h.sweep() == 1
        async with h.running():
            order = await h.settle(order_id)
        assert order.status == "CONFIRMED"
        assert await h.saga_log(order_id, "step.resent") == [("step.resent", "fulfil")]
        assert [s.status for s in await h.shipments(order_id)] == ["SHIPPED"]
        assert (await h.payment(order_id)).status == "CAPTURED"
        await finished(h, order)


async def _has(h: SagaHarness, type_: str, order_id: str) -> bool:
    return bool(await h.outbox(type_, order_id))


async def test_a_resent_command_that_runs_after_the_first_answers_again_and_changes_nothing(
    backend: Backend,
) -> None:
    """The first authorize was only slow: it runs, and the order is captured and confirmed;
    then the one sent again runs. It finds the authorization recorded, answers as the first
    did (a reply the saga ignores) and leaves the captured record as it is."""
    async with saga_harness(backend, step_timeout_seconds=30) as h:
        async with h.running(exclude=[PAYMENT]):
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, AUTHORIZE)
        h.clock.advance(timedelta(seconds=11))
        assert await h.sweep() == 1
        _first, again = await h.outbox("payment.authorize", order_id)
        later = outbox_messages.update().where(outbox_messages.c.id == again.id)
        async with h.container.engine.begin() as conn:  # held back until the order is done
            await conn.execute(later.values(available_at=h.clock.now() + timedelta(hours=1)))
        async with h.running():
            order = await h.settle(order_id)
            assert order.status == "CONFIRMED"
            assert (await h.payment(order_id)).status == "CAPTURED"
            async with h.container.engine.begin() as conn:
                await conn.execute(later.values(available_at=h.clock.now()))
            await h.wait_until(lambda: _all_sent(h, order_id), "every command answered")
        payment = await h.payment(order_id)
        assert (payment.status, payment.authorized_minor, payment.captured_minor) == (
            "CAPTURED",
            order.total_minor,
            order.total_minor,
        )
        assert (await h.order(order_id)).status == "CONFIRMED"
        kinds = [kind for kind, _, _ in await h.payment_operations(order_id)]
        assert sorted(kinds) == ["authorize", "authorize", "capture"]
        await finished(h, order)


class HeldCaptures(DelegatingGateway):
    """Captures wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__(SimulatedGateway())
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        self.waiting.set()
        await self.release.wait()
        return await self.inner.capture(key=key, reference=reference, amount_minor=amount_minor)


async def test_a_capture_that_times_out_and_then_lands_is_refunded(backend: Backend) -> None:
    gateway = HeldCaptures()
    async with saga_harness(backend, gateway=gateway, step_timeout_seconds=30) as h:
        before = await h.all_stock()
        async with h.running():
            order_id = await h.place({"PROD-001": 2})
            await asyncio.wait_for(gateway.waiting.wait(), timeout=15)
            h.clock.advance(timedelta(seconds=31))
            assert await h.sweep() == 1  # the capture step times out: undo it blind, and on
            gateway.release.set()  # ... then the capture goes through after all
            order = await h.settle(order_id)
            await h.wait_until(lambda: _all_sent(h, order_id), "every command answered")

        assert (order.status, order.failure_reason) == ("FAILED", "PROCESSING_ERROR"), (
            f"{order.status}: {await h.payment_operations(order.id)}"
        )
        assert await h.compensated_steps(order.id) == ["capture", "fulfil", "authorize", "reserve"]
        payment = await h.payment(order.id)
        assert payment.captured_minor - payment.refunded_minor == 0, (
            f"a failed order kept the customer's money: {await h.payment_operations(order.id)}"
        )
        assert await h.all_stock() == before
        await finished(h, order)


async def test_a_customer_cancels_during_review_and_the_reservation_is_released(
    backend: Backend,
) -> None:
    async with saga_harness(backend, fraud_review_above_minor=5_000) as h:
        before = await h.all_stock()
        async with h.running():
            order_id = await held_for_review(h, {"PROD-001": 2})
            assert await h.cancel(order_id) == "cancelling"
            order = await h.settle(order_id)
            assert await h.cancel(order_id) == "cancelled", "cancelling again is harmless"

        assert (order.status, order.failure_reason) == ("CANCELLED", None)
        events = await h.event_types(order.id)
        assert events[-4:] == [
            "order.cancel_requested",
            "order.compensation_started",
            "order.step_compensated",
            "order.cancelled",
        ]
        assert await h.compensated_steps(order.id) == ["reserve"]
        assert await h.payment_operations(order.id) == []
        assert await h.all_stock() == before
        await finished(h, order)


async def test_a_cancel_while_payment_is_in_flight_voids_the_late_authorization(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        before = await h.all_stock()
        async with h.running(exclude=[PAYMENT]):
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, AUTHORIZE)
            assert await h.cancel(order_id) == "cancelling"
        async with h.running():
            order = await h.settle(order_id)

        assert order.status == "CANCELLED"
        assert await h.compensated_steps(order.id) == ["authorize", "reserve"]
        assert await h.payment_operations(order.id) == [
            ("authorize", True, 2 * HEADPHONES),
            ("void", True, 2 * HEADPHONES),
        ]
        assert (await h.payment(order.id)).status == "VOIDED"
        assert await h.all_stock() == before
        await finished(h, order)


async def test_an_order_being_fulfilled_can_no_longer_be_cancelled(backend: Backend) -> None:
    async with saga_harness(backend) as h:
        async with h.running(exclude=[WAREHOUSE]):  # shipments requested, not yet shipped
            order_id = await h.place({"PROD-001": 2})
            await h.wait_for_step(order_id, FULFIL)
            with pytest.raises(OrderConflict):
                await h.cancel(order_id)
        async with h.running():
            order = await h.settle(order_id)

        assert order.status == "CONFIRMED"
        assert "order.cancel_requested" not in await h.event_types(order.id)
        await finished(h, order)


class UnvoidableGateway(DelegatingGateway):
    """Every void fails as if the gateway were down."""

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        raise GatewayUnavailable("the gateway is down for voids")


async def test_a_compensation_that_keeps_failing_parks_the_order_and_alerts_an_operator(
    backend: Backend,
) -> None:
    async with saga_harness(
        backend,
        gateway=UnvoidableGateway(SimulatedGateway()),
        retry_attempts=2,
        warehouse_failure_rate=1.0,
    ) as h:
        async with h.running():
            order = await h.settle(await h.place({"PROD-001": 2}))

            async def alerted() -> bool:
                return bool(h.alerts.attention)

            await h.wait_until(alerted, "the needs-attention alert")

        assert order.status == "NEEDS_ATTENTION"
        events = await h.event_types(order.id)
        assert events[-2:] == ["order.compensation_failed", "order.needs_attention"]
        # Fulfilment (nothing shipped) is undone first; the void fails and everything stops.
        assert await h.compensated_steps(order.id) == ["fulfil", "authorize"], "it stops there"
        [(alerted_order, why, _)] = h.alerts.attention
        assert alerted_order == order.id
        assert "authorize" in why
        [message] = await h.outbox(ALERT_NEEDS_ATTENTION, order.id)
        assert message.payload["orderId"] == order.id
        assert [letter.message.type for letter in h.alerts.dead_letters] == ["payment.void"]
        # Nothing is silently undone: the hold and the reservation wait for a human.
        assert (await h.payment(order.id)).status == "AUTHORIZED"
        assert await h.stock_levels("PROD-001") == {"WH-AUS": (10, 2), "WH-NYC": (5, 0)}
        await finished(h, order)


async def test_replaying_the_intake_request_answers_the_same_order_whose_key_followed_it(
    backend: Backend,
) -> None:
    async with saga_harness(backend) as h:
        body = {"items": [{"sku": "PROD-003", "quantity": 1}], "paymentMethod": "pm_card_visa"}
        headers = {**h.auth("alice"), "Idempotency-Key": "saga-replay-1"}
        async with h.running():
            first = await h.client.post("/api/orders", json=body, headers=headers)
            order = await h.settle(first.json()["orderId"])
            again = await h.client.post("/api/orders", json=body, headers=headers)

        assert order.status == "CONFIRMED"
        assert again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        assert await h.key_status(order.id) == "CONFIRMED"
        assert len(await h.shipments(order.id)) == 1, "the replay placed nothing new"


async def test_an_admin_stock_count_is_an_entry_in_the_ledger(backend: Backend) -> None:
    """Stock moves only with a ledger entry, whichever unit of work the API uses."""
    async with saga_harness(backend) as h:
        response = await h.client.put(
            "/api/admin/inventory/PROD-001",
            json={"warehouseId": "WH-AUS", "onHand": 3},
            headers=h.auth("ops", "admin"),
        )
        assert response.status_code == 200, response.text
        assert await h.stock_levels("PROD-001") == {"WH-AUS": (3, 0), "WH-NYC": (5, 0)}
        await h.ledger_balances()


async def _sent(h: SagaHarness, type_: str, order_id: str) -> bool:
    return any(m.sent_at is not None for m in await h.outbox(type_, order_id))


async def _all_sent(h: SagaHarness, order_id: str) -> bool:
    """Every message about the order that some consumer takes has been consumed."""
    waiting = set(await h.unsent(order_id)) - {"order.changed", "stock.changed"}
    return not waiting
