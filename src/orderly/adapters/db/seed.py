"""The demo catalogue: seed 003's three products plus a few more over two warehouses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.db.engine import dialect_insert
from orderly.adapters.db.saga_repositories import record_stock_changes
from orderly.adapters.db.tables import products, stock, warehouses

WAREHOUSES = [
    ("WH-AUS", "Austin fulfilment centre", 1),
    ("WH-NYC", "New York fulfilment centre", 2),
]


@dataclass(frozen=True)
class DemoProduct:
    sku: str
    name: str
    price_minor: int
    stock: dict[str, int]


PRODUCTS = [
    DemoProduct("PROD-001", "Wireless Headphones", 4999, {"WH-AUS": 10, "WH-NYC": 5}),
    DemoProduct("PROD-002", "Mechanical Keyboard", 8999, {"WH-AUS": 0, "WH-NYC": 0}),
    DemoProduct("PROD-003", "USB-C Hub", 2999, {"WH-AUS": 20, "WH-NYC": 10}),
    DemoProduct("PROD-004", "Laptop Stand", 3999, {"WH-NYC": 25}),
    DemoProduct("PROD-005", "1080p Webcam", 5999, {"WH-AUS": 8, "WH-NYC": 4}),
    DemoProduct("PROD-006", "Noise-Cancelling Earbuds", 12900, {"WH-AUS": 50}),
]


async def seed_demo_catalogue(engine: AsyncEngine) -> int:
    """Insert the demo warehouses, products and stock that are missing; return rows added.

    Existing rows are left alone, so seeding twice never resets stock.
    """
    added = 0
    opening: list[dict[str, Any]] = []
    async with engine.begin() as conn:
        for wid, name, priority in WAREHOUSES:
            result = await conn.execute(
                dialect_insert(conn, warehouses)
                .values(id=wid, name=name, priority=priority)
                .on_conflict_do_nothing()
            )
            added += result.rowcount
        for p in PRODUCTS:
            result = await conn.execute(
                dialect_insert(conn, products)
                .values(sku=p.sku, name=p.name, price_minor=p.price_minor, currency="USD")
                .on_conflict_do_nothing()
            )
            added += result.rowcount
            for wid, qty in p.stock.items():
                result = await conn.execute(
                    dialect_insert(conn, stock)
                    .values(sku=p.sku, warehouse_id=wid, on_hand=qty, reserved=0)
                    .on_conflict_do_nothing()
                )
                added += result.rowcount
                if result.rowcount:
                    opening.append(
                        {
                            "sku": p.sku,
                            "warehouse_id": wid,
                            "kind": "adjust",
                            "on_hand_delta": qty,
                            "reserved_delta": 0,
                            "order_id": None,
                        }
                    )
        # The opening stock is the ledger's first entry, so on_hand reconciles from it.
        await record_stock_changes(conn, opening, datetime.now(UTC))
    return added
