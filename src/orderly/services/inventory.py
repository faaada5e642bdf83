"""Inventory use cases available before the saga: operators setting stock on hand."""

from __future__ import annotations

from orderly.domain.catalogue import StockLevel
from orderly.services.ports import StockChange, UnitOfWorkFactory


class UnknownSku(LookupError):
    pass


class UnknownWarehouse(LookupError):
    pass


class BelowReserved(ValueError):
    pass


async def set_on_hand(uow_factory: UnitOfWorkFactory, change: StockChange) -> StockLevel:
    """Set a warehouse's on-hand count for a SKU; it may not drop below what is reserved."""
    async with uow_factory() as uow:
        if not await uow.products.exists(change.sku):
            raise UnknownSku(change.sku)
        if not await uow.inventory.warehouse_exists(change.warehouse_id):
            raise UnknownWarehouse(change.warehouse_id)
        level = await uow.inventory.set_on_hand(change)
        if level is None:
            raise BelowReserved(
                f"on hand for {change.sku} in {change.warehouse_id} cannot go below reserved"
            )
        await uow.commit()
        return level
