"""Products and warehouses as the order intake sees them."""

from __future__ import annotations

from dataclasses import dataclass

from orderly.domain.money import Money


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    price: Money


@dataclass(frozen=True, slots=True)
class Warehouse:
    id: str
    name: str
    priority: int


@dataclass(frozen=True, slots=True)
class StockLevel:
    """Stock of one SKU in one warehouse. ``available`` is what can still be reserved."""

    sku: str
    warehouse_id: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved
