"""processOrder: the first real consumer (seed 000's worker transaction).

Consumes ``order.placed``: takes the stock of every line (conditional updates, never below
zero; all or nothing) and confirms the order, or fails it with ``OUT_OF_STOCK``; the order's
idempotency record follows. The saga (issue 4) replaces this one-step decision.
"""

from __future__ import annotations

from orderly.domain.events import ORDER_PLACED, Message
from orderly.domain.processing import (
    Allocation,
    FailureReason,
    StoredOrder,
    Transition,
    confirm,
    fail,
    is_open,
)
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.ports import JSON, Clock, MessageUnitOfWork

PROCESS_ORDER = "process-order"


class OrderMovedConcurrently(Exception):
    """Someone else moved the order between our read and our write; retrying decides again."""


def _order_id(message: Message) -> str:
    order_id = message.payload.get("orderId")
    if not isinstance(order_id, str) or not order_id:
        raise PermanentError(f"{message.type} without an orderId")
    return order_id


async def _load(uow: MessageUnitOfWork, message: Message) -> StoredOrder:
    order_id = _order_id(message)
    order = await uow.order_states.load(order_id)
    if order is None:
        raise PermanentError(f"order {order_id} does not exist")
    return order


async def _apply(uow: MessageUnitOfWork, transition: Transition) -> None:
    if not await uow.order_states.apply(transition):
        raise OrderMovedConcurrently(transition.order_id)
    await uow.key_status.follow(transition.order_id, transition.status.value)


async def process_order(uow: MessageUnitOfWork, message: Message, *, clock: Clock) -> None:
    order = await _load(uow, message)
    if not is_open(order):
        return
    taken: list[Allocation] = []
    # Stock rows are always locked in SKU order, so two orders never wait on each other.
    for line in sorted(order.lines, key=lambda line: line.sku):
        allocations = await uow.stock.take(line.sku, line.quantity)
        if allocations is None:
            for allocation in reversed(taken):
                await uow.stock.put_back(allocation)
            transition = fail(
                order, FailureReason.OUT_OF_STOCK, clock.now(), message.id, sku=line.sku
            )
            await _apply(uow, transition)
            return
        taken += allocations
    await _apply(uow, confirm(order, taken, clock.now(), message.id))


async def fail_order_on_dead_letter(
    uow: MessageUnitOfWork, message: Message, reason: str, *, clock: Clock
) -> JSON:
    """The normal failure path for an order whose message ran out of attempts."""
    order = await uow.order_states.load(_order_id(message))
    if order is None:
        return {"order": None}
    context: JSON = {
        "order": {"id": order.id, "status": order.status.value, "version": order.version}
    }
    if is_open(order):
        transition = fail(
            order, FailureReason.PROCESSING_ERROR, clock.now(), message.id, error=reason
        )
        await _apply(uow, transition)
        context["orderFailed"] = True
    return context


def process_order_handler(clock: Clock, policy: RetryPolicy | None = None) -> Handler:
    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        await process_order(uow, message, clock=clock)

    async def on_dead_letter(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
        return await fail_order_on_dead_letter(uow, message, reason, clock=clock)

    return Handler(
        consumer=PROCESS_ORDER,
        types=frozenset({ORDER_PLACED}),
        handle=handle,
        policy=policy or RetryPolicy(),
        on_dead_letter=on_dead_letter,
    )
