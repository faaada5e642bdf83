"""The services the order saga drives: inventory, fraud, payment, fulfilment, the warehouse.

Each consumes its commands and answers with reply events through the outbox, in the handler's
transaction. Every handler is idempotent twice over: the inbox skips a redelivered message, and
each service keeps per-order state (a reservation header, a payment record, shipments) so a
command that arrives after its compensation (a blind undo of a timed-out step) does nothing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from orderly.domain.events import Message
from orderly.domain.fraud import FraudEngine, FraudOutcome, FraudSubject
from orderly.domain.inventory import (
    AllocationStrategy,
    Pick,
    ReservationStatus,
    Shortfall,
    plan_allocation,
)
from orderly.domain.order_saga import (
    AUTHORIZE_PAYMENT,
    CANCEL_SHIPMENTS,
    CAPTURE_PAYMENT,
    CHECK_FRAUD,
    FRAUD_APPROVED,
    FRAUD_REJECTED,
    FRAUD_REVIEW_REQUIRED,
    FULFIL_ORDER,
    FULFILMENT_FAILED,
    ORDER_SHIPPED,
    PAYMENT_AUTHORIZED,
    PAYMENT_CAPTURE_FAILED,
    PAYMENT_CAPTURED,
    PAYMENT_DECLINED,
    PAYMENT_REFUNDED,
    PAYMENT_VOIDED,
    REFUND_PAYMENT,
    RELEASE_STOCK,
    RESERVE_STOCK,
    SHIPMENTS_CANCELLED,
    STOCK_RELEASED,
    STOCK_RESERVATION_FAILED,
    STOCK_RESERVED,
    VOID_PAYMENT,
)
from orderly.domain.processing import FailureReason
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.payments import (
    GatewayUnavailable,
    PaymentError,
    PaymentGateway,
    PaymentResult,
)
from orderly.services.ports import JSON, Clock, IdGenerator, MessageUnitOfWork
from orderly.services.saga import Command, ReplyOut, command_handler, parse_command, reply_message
from orderly.services.saga_ports import (
    FraudReview,
    OrderFacts,
    PaymentOperation,
    PaymentRecord,
    ReservedLine,
    Shipment,
)

INVENTORY = "inventory"
FRAUD = "fraud"
PAYMENT = "payment"
FULFILMENT = "fulfilment"
WAREHOUSE = "warehouse"
SHIP_FROM_WAREHOUSE = "warehouse.ship"
"""The simulated warehouse's work item: pick, pack and ship one shipment."""

_PLAN_ROUNDS = 5
NOT_VOIDABLE = "not_voidable"


class StaleStock(Exception):
    """Stock moved under every plan we made; retrying the message plans again."""


@dataclass(frozen=True, slots=True)
class StepSettings:
    reservation_ttl: timedelta = timedelta(minutes=15)
    allocation: AllocationStrategy = AllocationStrategy.PRIORITY
    review_timeout: timedelta = timedelta(minutes=10)
    velocity_window: timedelta = timedelta(hours=1)
    warehouse_delay: timedelta = timedelta(0)
    warehouse_failure_rate: float = 0.0
    warehouse_seed: int = 0
    payment_lanes: int = 128


async def _facts(uow: MessageUnitOfWork, command: Command) -> OrderFacts:
    facts = await uow.order_stream.facts(command.saga_key)
    if facts is None:
        raise PermanentError(f"order {command.saga_key} does not exist")
    return facts


# ---- inventory ---------------------------------------------------------------------------------


def inventory_handler(
    settings: StepSettings, *, clock: Clock, ids: IdGenerator, policy: RetryPolicy
) -> Handler:
    async def work(uow: MessageUnitOfWork, command: Command) -> ReplyOut | None:
        if command.message.type == RESERVE_STOCK:
            return await reserve(uow, command)
        return await release(uow, command)

    async def reserve(uow: MessageUnitOfWork, command: Command) -> ReplyOut | None:
        facts = await _facts(uow, command)
        now = clock.now()
        existing = await uow.reservations.open(facts.id, now + settings.reservation_ttl, now)
        if existing is not None:
            return await _answer_again(uow, facts.id, existing)
        requested: dict[str, int] = defaultdict(int)
        for line in facts.lines:
            requested[line.sku] += line.quantity
        for _ in range(_PLAN_ROUNDS):
            plan = plan_allocation(
                requested, await uow.reservations.available(requested), settings.allocation
            )
            if plan and isinstance(plan[0], Shortfall):
                await uow.reservations.release(facts.id, now)
                short = [s for s in plan if isinstance(s, Shortfall)]
                return ReplyOut(
                    STOCK_RESERVATION_FAILED,
                    {
                        "reason": FailureReason.OUT_OF_STOCK.value,
                        "skus": [s.sku for s in short],
                        "shortfall": [
                            {"sku": s.sku, "requested": s.requested, "available": s.available}
                            for s in short
                        ],
                    },
                )
            picks = [p for p in plan if isinstance(p, Pick)]
            if await uow.reservations.reserve(facts.id, picks, now):
                return ReplyOut(
                    STOCK_RESERVED, _reserved_data(picks, now + settings.reservation_ttl)
                )
        raise StaleStock(facts.id)

    async def release(uow: MessageUnitOfWork, command: Command) -> ReplyOut:
        released = await uow.reservations.release(command.saga_key, clock.now())
        return ReplyOut(STOCK_RELEASED, {"released": _lines_json(released)})

    return command_handler(
        INVENTORY,
        frozenset({RESERVE_STOCK, RELEASE_STOCK}),
        clock=clock,
        ids=ids,
        policy=policy,
        work=work,
    )


async def _answer_again(uow: MessageUnitOfWork, order_id: str, status: str) -> ReplyOut:
    """A reserve command for an order that already has a reservation header."""
    if status == ReservationStatus.ACTIVE:
        lines = await uow.reservations.lines(order_id, ReservationStatus.ACTIVE)
        picks = [Pick(x.sku, x.warehouse_id, x.quantity) for x in lines]
        return ReplyOut(STOCK_RESERVED, {"allocations": _picks_json(picks)})
    # Released before it was made (a blind compensation) or expired: never reserve again.
    return ReplyOut(
        STOCK_RESERVATION_FAILED,
        {"reason": FailureReason.PROCESSING_ERROR.value, "error": f"reservation {status}"},
    )


def _picks_json(picks: list[Pick]) -> list[JSON]:
    return [{"sku": p.sku, "warehouseId": p.warehouse_id, "quantity": p.quantity} for p in picks]


def _lines_json(lines: list[ReservedLine]) -> list[JSON]:
    return [{"sku": x.sku, "warehouseId": x.warehouse_id, "quantity": x.quantity} for x in lines]


def _reserved_data(picks: list[Pick], expires_at: datetime) -> JSON:
    return {"allocations": _picks_json(picks), "expiresAt": expires_at.isoformat()}


# ---- fraud -------------------------------------------------------------------------------------


def fraud_handler(
    engine: FraudEngine,
    settings: StepSettings,
    *,
    clock: Clock,
    ids: IdGenerator,
    policy: RetryPolicy,
) -> Handler:
    async def work(uow: MessageUnitOfWork, command: Command) -> ReplyOut:
        facts = await _facts(uow, command)
        now = clock.now()
        recent = await uow.order_stream.recent_orders(
            facts.customer_id, facts.created_at - settings.velocity_window
        )
        verdict = engine.evaluate(
            FraudSubject(
                order_id=facts.id,
                customer_id=facts.customer_id,
                total_minor=facts.total_minor,
                currency=facts.currency,
                shipping_address=facts.shipping_address,
                recent_orders=recent,
            )
        )
        data = verdict.as_dict()
        if verdict.outcome is FraudOutcome.REJECT:
            return ReplyOut(FRAUD_REJECTED, {"reason": FailureReason.FRAUD_REJECTED.value, **data})
        if verdict.outcome is FraudOutcome.REVIEW:
            if await uow.fraud_reviews.get(facts.id) is None:
                await uow.fraud_reviews.open(
                    FraudReview(
                        order_id=facts.id,
                        status="PENDING",
                        verdict=data,
                        created_at=now,
                        expires_at=now + settings.review_timeout,
                        decided_by=None,
                        decided_at=None,
                    )
                )
            return ReplyOut(FRAUD_REVIEW_REQUIRED, data)
        return ReplyOut(FRAUD_APPROVED, data)

    return command_handler(
        FRAUD, frozenset({CHECK_FRAUD}), clock=clock, ids=ids, policy=policy, work=work
    )


# ---- payment -----------------------------------------------------------------------------------


def payment_key(order_id: str, operation: str) -> str:
    """The gateway idempotency key of one operation of one order (never the client's key)."""
    return f"orderly:{order_id}:{operation}"


def payment_handler(
    gateway: PaymentGateway,
    settings: StepSettings,
    *,
    clock: Clock,
    ids: IdGenerator,
    policy: RetryPolicy,
) -> Handler:
    """Gateway calls happen in ``prepare``, outside the transaction; results are stored after."""

    async def prepare(command: Command) -> PaymentResult | None:
        context = command.context
        order_id = command.saga_key
        type_ = command.message.type
        try:
            if type_ == AUTHORIZE_PAYMENT:
                return await gateway.authorize(
                    key=payment_key(order_id, "authorize"),
                    order_id=order_id,
                    amount_minor=int(context["totalMinor"]),
                    currency=str(context["currency"]),
                    payment_method=str(context["paymentMethod"]),
                    customer_id=str(context["customerId"]),
                )
            reference = command.step_data("authorize").get("reference")
            if not isinstance(reference, str):
                return None
            if type_ == VOID_PAYMENT:
                try:
                    return await gateway.void(
                        key=payment_key(order_id, "void"), reference=reference
                    )
                except PaymentError as exc:
                    # Captured (and refunded, if need be) already: there is no hold to release.
                    return PaymentResult(False, reference, 0, NOT_VOIDABLE, str(exc))
            if type_ == CAPTURE_PAYMENT:
                amount = int(command.step_data("fulfil").get("shippedValueMinor", 0))
                return await gateway.capture(
                    key=payment_key(order_id, "capture"), reference=reference, amount_minor=amount
                )
            captured = int(command.step_data("capture").get("amountMinor", 0))
            if captured <= 0:
                return None
            return await gateway.refund(
                key=payment_key(order_id, "refund-saga"),
                reference=reference,
                amount_minor=captured,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"{type_}: bad saga context: {exc}") from exc
        except PaymentError as exc:
            raise PermanentError(f"{type_}: the gateway refused: {exc}") from exc

    async def apply(
        uow: MessageUnitOfWork, command: Command, result: PaymentResult | None
    ) -> ReplyOut | None:
        type_ = command.message.type
        if type_ == AUTHORIZE_PAYMENT:
            assert result is not None
            return await _authorized(uow, command, result, gateway.name)
        if type_ == VOID_PAYMENT:
            return await _voided(uow, command, result)
        if type_ == CAPTURE_PAYMENT:
            return await _captured(uow, command, result)
        return await _refunded(uow, command, result)

    async def _authorized(
        uow: MessageUnitOfWork, command: Command, result: PaymentResult, gateway_name: str
    ) -> ReplyOut:
        order_id = command.saga_key
        now = clock.now()
        context = command.context
        await _log_op(uow, order_id, "authorize", result, now)
        existing = await uow.payments.get(order_id)
        if existing is not None and existing.status == "VOIDED":
            if result.ok:
                # Voided blind before this authorization landed: undo it too, never keep a hold.
                await uow.outbox.add(_void_late_authorization(command, result, ids=ids, now=now))
            return ReplyOut(
                PAYMENT_DECLINED,
                {
                    "reason": FailureReason.PROCESSING_ERROR.value,
                    "error": "voided before authorization",
                },
            )
        if existing is not None:
            # Recorded by an earlier run of this step (the command sent again): answer as then
            # and leave the record, which may have moved on (captured, refunded) since.
            return _authorization_reply(existing)
        record = PaymentRecord(
            order_id=order_id,
            gateway=gateway_name,
            reference=result.reference,
            status="AUTHORIZED" if result.ok else "DECLINED",
            currency=str(context.get("currency", "")),
            authorized_minor=result.amount_minor if result.ok else 0,
            captured_minor=0,
            refunded_minor=0,
            decline_code=result.decline_code,
            message=result.message,
        )
        await uow.payments.put(record, now)
        return _authorization_reply(record)

    async def _voided(
        uow: MessageUnitOfWork, command: Command, result: PaymentResult | None
    ) -> ReplyOut | None:
        order_id = command.saga_key
        now = clock.now()
        record = await uow.payments.get(order_id)
        if result is None:
            if record is None:
                await uow.payments.tombstone(
                    order_id, str(command.context.get("currency", "")), now
                )
            elif record.status == "AUTHORIZED" and record.reference:
                # A blind void (the step timed out) of an authorization that did land: void it
                # by its reference; that command answers the saga.
                await uow.outbox.add(_again(command, {"reference": record.reference}, ids, now))
                return None
            return ReplyOut(PAYMENT_VOIDED, {"voided": False})
        await _log_op(uow, order_id, "void", result, now)
        if result.decline_code == NOT_VOIDABLE:
            return ReplyOut(PAYMENT_VOIDED, {"voided": False, "why": result.message})
        if not result.ok:
            raise GatewayUnavailable(f"void refused: {result.message}")
        if record is not None:
            await uow.payments.put(_with(record, status="VOIDED"), now)
        return ReplyOut(PAYMENT_VOIDED, {"voided": True, "reference": result.reference})

    async def _captured(
        uow: MessageUnitOfWork, command: Command, result: PaymentResult | None
    ) -> ReplyOut:
        order_id = command.saga_key
        now = clock.now()
        if result is None:
            return ReplyOut(
                PAYMENT_CAPTURE_FAILED,
                {"reason": FailureReason.PROCESSING_ERROR.value, "error": "no authorization"},
            )
        await _log_op(uow, order_id, "capture", result, now)
        record = await uow.payments.get(order_id)
        if not result.ok:
            return ReplyOut(
                PAYMENT_CAPTURE_FAILED,
                {
                    "reason": FailureReason.PAYMENT_DECLINED.value,
                    "declineCode": result.decline_code,
                    "message": result.message,
                },
            )
        if record is not None and record.status in _CAPTURED_OR_AFTER:
            # Recorded by an earlier run of this step (the command sent again): answer as then
            # and leave the record, which may have been refunded since.
            return ReplyOut(
                PAYMENT_CAPTURED,
                {"amountMinor": record.captured_minor, "transactionId": result.reference},
            )
        if record is not None:
            await uow.payments.put(
                _with(record, status="CAPTURED", captured_minor=result.amount_minor), now
            )
        return ReplyOut(
            PAYMENT_CAPTURED,
            {"amountMinor": result.amount_minor, "transactionId": result.reference},
        )

    async def _refunded(
        uow: MessageUnitOfWork, command: Command, result: PaymentResult | None
    ) -> ReplyOut | None:
        order_id = command.saga_key
        now = clock.now()
        if result is None:
            record = await uow.payments.get(order_id)
            left = record.captured_minor - record.refunded_minor if record else 0
            if record is not None and record.reference and left > 0:
                # A blind refund (the capture timed out, then landed): refund what was taken.
                again = _again(
                    command,
                    {"reference": record.reference},
                    ids,
                    now,
                    capture={"amountMinor": left},
                )
                await uow.outbox.add(again)
                return None
            return ReplyOut(PAYMENT_REFUNDED, {"refundedMinor": 0})
        await _log_op(uow, order_id, "refund", result, now)
        if not result.ok:
            raise GatewayUnavailable(f"refund refused: {result.message}")
        record = await uow.payments.get(order_id)
        if record is not None:
            refunded = record.refunded_minor + result.amount_minor
            status = "REFUNDED" if refunded >= record.captured_minor else "PARTIALLY_REFUNDED"
            await uow.payments.put(_with(record, status=status, refunded_minor=refunded), now)
        return ReplyOut(PAYMENT_REFUNDED, {"refundedMinor": result.amount_minor})

    return command_handler(
        PAYMENT,
        frozenset({AUTHORIZE_PAYMENT, VOID_PAYMENT, CAPTURE_PAYMENT, REFUND_PAYMENT}),
        clock=clock,
        ids=ids,
        policy=policy,
        prepare=prepare,
        prepared_work=apply,
        lanes=settings.payment_lanes,
    )


def _with(record: PaymentRecord, **changes: Any) -> PaymentRecord:
    return replace(record, **changes)


def _again(
    command: Command,
    authorize: JSON,
    ids: IdGenerator,
    now: datetime,
    **steps: JSON,
) -> Message:
    """The same compensation command, now with what the stored payment record knows."""
    context = {**command.context, "authorize": authorize, **steps}
    return Message(
        id=ids.new_id(),
        type=command.message.type,
        key=command.saga_key,
        payload={**command.message.payload, "context": context},
        created_at=now,
        correlation_id=command.message.correlation_id,
        causation_id=command.message.id,
    )


def _void_late_authorization(
    command: Command, result: PaymentResult, *, ids: IdGenerator, now: datetime
) -> Message:
    context = {**command.context, "authorize": {"reference": result.reference}}
    return Message(
        id=ids.new_id(),
        type=VOID_PAYMENT,
        key=command.saga_key,
        payload={**command.message.payload, "compensation": True, "context": context},
        created_at=now,
        correlation_id=command.message.correlation_id,
        causation_id=command.message.id,
    )


_CAPTURED_OR_AFTER = frozenset({"CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED"})


def _authorization_reply(record: PaymentRecord) -> ReplyOut:
    """The authorize step's reply for the authorization it recorded (first run or again)."""
    if record.status == "DECLINED":
        return ReplyOut(
            PAYMENT_DECLINED,
            {
                "reason": FailureReason.PAYMENT_DECLINED.value,
                "declineCode": record.decline_code,
                "message": record.message,
            },
        )
    return ReplyOut(
        PAYMENT_AUTHORIZED, {"reference": record.reference, "amountMinor": record.authorized_minor}
    )


async def _log_op(
    uow: MessageUnitOfWork, order_id: str, kind: str, result: PaymentResult, now: datetime
) -> None:
    await uow.payments.record(
        PaymentOperation(
            order_id=order_id,
            kind=kind,
            key=payment_key(order_id, kind),
            amount_minor=result.amount_minor,
            ok=result.ok,
            reference=result.reference,
            decline_code=result.decline_code,
            message=result.message,
        ),
        now,
    )


# ---- fulfilment and the simulated warehouse ----------------------------------------------------


def fulfilment_handler(
    settings: StepSettings, *, clock: Clock, ids: IdGenerator, policy: RetryPolicy
) -> Handler:
    async def work(uow: MessageUnitOfWork, command: Command) -> ReplyOut | None:
        if command.message.type == FULFIL_ORDER:
            return await request(uow, command)
        return await cancel(uow, command)

    async def request(uow: MessageUnitOfWork, command: Command) -> ReplyOut | None:
        order_id = command.saga_key
        requested = await uow.shipments.for_order(order_id)
        if requested:
            # Sent again (the saga heard nothing): ask the warehouse again for what it has not
            # shipped, in case the broker lost that; it ships a shipment once, and answers.
            for shipment in requested:
                if shipment.status == "REQUESTED":
                    await uow.outbox.add(_ship(command, shipment.id, settings, ids, clock.now()))
            return None
        facts = await _facts(uow, command)
        # Locked: the lines cannot expire under the shipments made of them, and the warehouse
        # (handed off in this transaction, or not) ships from the same lines.
        lines = await uow.reservations.lines(order_id, ReservationStatus.ACTIVE, lock=True)
        if not lines:
            return ReplyOut(
                FULFILMENT_FAILED,
                {"reason": FailureReason.RESERVATION_EXPIRED.value, "error": "no reservation"},
            )
        prices = {line.sku: line.unit_price_minor for line in facts.lines}
        by_warehouse: dict[str, list[ReservedLine]] = defaultdict(list)
        for line in lines:
            by_warehouse[line.warehouse_id].append(line)
        now = clock.now()
        shipments = [
            Shipment(
                id=f"{order_id}:{warehouse}",
                order_id=order_id,
                warehouse_id=warehouse,
                status="REQUESTED",
                lines=tuple(picked),
                value_minor=sum(prices.get(x.sku, 0) * x.quantity for x in picked),
                created_at=now,
                updated_at=now,
            )
            for warehouse, picked in sorted(by_warehouse.items())
        ]
        await uow.shipments.create(shipments)
        for shipment in shipments:
            await uow.outbox.add(_ship(command, shipment.id, settings, ids, now))
        return None

    async def cancel(uow: MessageUnitOfWork, command: Command) -> ReplyOut:
        order_id = command.saga_key
        now = clock.now()
        cancelled, returned = [], []
        for shipment in await uow.shipments.for_order(order_id):
            if await uow.shipments.move(shipment.id, "REQUESTED", "CANCELLED", now):
                cancelled.append(shipment.id)
            elif await uow.shipments.move(shipment.id, "SHIPPED", "RETURNED", now):
                await uow.reservations.restock(order_id, shipment.lines, now)
                returned.append(shipment.id)
        return ReplyOut(SHIPMENTS_CANCELLED, {"cancelled": cancelled, "returned": returned})

    return command_handler(
        FULFILMENT,
        frozenset({FULFIL_ORDER, CANCEL_SHIPMENTS}),
        clock=clock,
        ids=ids,
        policy=policy,
        work=work,
    )


def _ship(
    command: Command, shipment_id: str, settings: StepSettings, ids: IdGenerator, now: datetime
) -> Message:
    """The warehouse's order to ship ``shipment_id`` (after the configured delay)."""
    return Message(
        id=ids.new_id(),
        type=SHIP_FROM_WAREHOUSE,
        key=command.saga_key,
        payload={**command.message.payload, "shipmentId": shipment_id},
        created_at=now,
        correlation_id=command.message.correlation_id,
        causation_id=command.message.id,
        not_before=now + settings.warehouse_delay if settings.warehouse_delay else None,
    )


def warehouse_handler(
    settings: StepSettings, *, clock: Clock, ids: IdGenerator, policy: RetryPolicy
) -> Handler:
    """A simulated warehouse: ships each requested shipment, or fails it at a seeded rate."""

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        command = parse_command(message)
        shipment_id = message.payload.get("shipmentId")
        if not isinstance(shipment_id, str):
            raise PermanentError("warehouse.ship without a shipmentId")
        shipment = await uow.shipments.get(shipment_id)
        if shipment is None or shipment.status != "REQUESTED":
            return  # cancelled meanwhile, or already done
        now = clock.now()
        reply: ReplyOut | None
        if _fails(settings, shipment_id):
            await uow.shipments.move(shipment_id, "REQUESTED", "FAILED", now)
            reply = ReplyOut(
                FULFILMENT_FAILED,
                {
                    "reason": FailureReason.PROCESSING_ERROR.value,
                    "error": f"warehouse {shipment.warehouse_id} could not ship",
                    "shipmentId": shipment_id,
                },
            )
        else:
            shipped = await uow.reservations.ship(shipment.order_id, shipment.warehouse_id, now)
            if not shipped:
                await uow.shipments.move(shipment_id, "REQUESTED", "FAILED", now)
                reply = ReplyOut(
                    FULFILMENT_FAILED,
                    {
                        "reason": FailureReason.RESERVATION_EXPIRED.value,
                        "error": "the reservation is gone",
                        "shipmentId": shipment_id,
                    },
                )
            else:
                await uow.shipments.move(shipment_id, "REQUESTED", "SHIPPED", now)
                reply = await _all_shipped(uow, shipment.order_id)
        if reply is not None:
            await uow.outbox.add(reply_message(command, reply, ids=ids, clock=clock))

    return Handler(
        consumer=WAREHOUSE,
        types=frozenset({SHIP_FROM_WAREHOUSE}),
        handle=handle,
        policy=policy,
    )


async def _all_shipped(uow: MessageUnitOfWork, order_id: str) -> ReplyOut | None:
    shipments = await uow.shipments.for_order(order_id)
    if any(s.status != "SHIPPED" for s in shipments):
        return None
    return ReplyOut(
        ORDER_SHIPPED,
        {
            "shippedValueMinor": sum(s.value_minor for s in shipments),
            "shipments": [
                {
                    "id": s.id,
                    "warehouseId": s.warehouse_id,
                    "lines": _lines_json(list(s.lines)),
                    "valueMinor": s.value_minor,
                }
                for s in shipments
            ],
        },
    )


def _fails(settings: StepSettings, shipment_id: str) -> bool:
    if settings.warehouse_failure_rate <= 0:
        return False
    digest = hashlib.sha256(f"{settings.warehouse_seed}:{shipment_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < settings.warehouse_failure_rate
