"""Order use cases: placing an order inside a unit of work, and reading orders back."""

from __future__ import annotations

from dataclasses import dataclass

from orderly.domain.orders import LineRequest, PlacedOrder, ShippingAddress, place_order
from orderly.services.ports import Clock, IdGenerator, UnitOfWork


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """Command: open a new order for ``customer_id``."""

    customer_id: str
    lines: tuple[LineRequest, ...]
    payment_method: str
    shipping_address: ShippingAddress | None


async def handle_place_order(
    uow: UnitOfWork, command: PlaceOrder, *, clock: Clock, ids: IdGenerator
) -> PlacedOrder:
    """Price the order server-side and write order, event and outbox message in ``uow``.

    Does not commit: the caller (the idempotency component) owns the transaction.
    """
    catalogue = await uow.products.by_skus({line.sku for line in command.lines})
    placed = place_order(
        order_id=ids.new_id(),
        message_id=ids.new_id(),
        customer_id=command.customer_id,
        lines=command.lines,
        catalogue=catalogue,
        payment_method=command.payment_method,
        shipping_address=command.shipping_address,
        now=clock.now(),
    )
    await uow.orders.add(placed)
    await uow.outbox.add(placed.message)
    return placed
