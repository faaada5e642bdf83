"""The benchmark's products and stock, the orders' bodies, and the stock checks after a run.

On a fresh database migrated and seeded by ``orderly migrate`` / ``orderly seed``, the benchmark
adds its own products in one transaction: ``skus`` "spread" SKUs with ample stock and one "hot"
SKU with ``hot_stock`` units, all in warehouse WH-AUS. Every stock row gets a matching
``stock_ledger`` ``adjust`` entry, as orderly's seed writes for the demo catalogue, so the ledger
balances from the start (checked again at the end).

Every order has one line of quantity 1 and pays with ``pm_card_visa`` (the simulated gateway
approves it). Its total (19.99 USD) is far below the fraud review threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from bench.intake import database
from bench.intake.loadgen import ADDRESS

WAREHOUSE = "WH-AUS"
PRICE_MINOR = 1999
SPREAD_PREFIX = "SAGA-S"
HOT_SKU = "SAGA-HOT"
AMPLE_STOCK = 1_000_000

ADD_PRODUCTS = """
INSERT INTO products (sku, name, price_minor, currency)
SELECT sku, 'Saga benchmark item ' || sku, $2, 'USD' FROM unnest($1::varchar[]) AS sku
"""
ADD_STOCK = """
INSERT INTO stock (sku, warehouse_id, on_hand, reserved)
SELECT sku, $3, qty, 0 FROM unnest($1::varchar[], $2::int[]) AS t(sku, qty)
"""
ADD_LEDGER = """
INSERT INTO stock_ledger (sku, warehouse_id, kind, on_hand_delta, reserved_delta, order_id, at)
SELECT sku, $3, 'adjust', qty, 0, NULL, now() FROM unnest($1::varchar[], $2::int[]) AS t(sku, qty)
"""
LEDGER_MISMATCHES = """
SELECT s.sku, s.warehouse_id, s.on_hand, s.reserved,
       coalesce(l.on_hand, 0) AS ledger_on_hand, coalesce(l.reserved, 0) AS ledger_reserved
FROM stock s
LEFT JOIN (
    SELECT sku, warehouse_id, sum(on_hand_delta) AS on_hand, sum(reserved_delta) AS reserved
    FROM stock_ledger GROUP BY sku, warehouse_id
) l USING (sku, warehouse_id)
WHERE s.on_hand <> coalesce(l.on_hand, 0) OR s.reserved <> coalesce(l.reserved, 0)
ORDER BY s.sku, s.warehouse_id
"""
BENCH_STOCK = """
SELECT coalesce(sum(on_hand), 0) AS on_hand, coalesce(sum(reserved), 0) AS reserved,
       count(*) AS rows
FROM stock WHERE sku LIKE $1
"""
HOT_STOCK = "SELECT on_hand, reserved FROM stock WHERE sku = $1 AND warehouse_id = $2"


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The benchmark's SKUs: many with ample stock, and one hot SKU with little."""

    skus: int
    hot_stock: int

    @property
    def spread(self) -> tuple[str, ...]:
        return tuple(f"{SPREAD_PREFIX}{n:05d}" for n in range(1, self.skus + 1))

    @property
    def hot(self) -> tuple[str, ...]:
        return (HOT_SKU,)


async def prepare_database(name: str, env: dict[str, str], catalogue: Catalogue) -> None:
    """Fresh, migrated and seeded; then the benchmark's products, stock and ledger entries."""
    await database.recreate(name, env)
    skus = [*catalogue.spread, HOT_SKU]
    quantities = [AMPLE_STOCK] * len(catalogue.spread) + [catalogue.hot_stock]
    conn = await asyncpg.connect(database.dsn(name))
    try:
        async with conn.transaction():
            await conn.execute(ADD_PRODUCTS, skus, PRICE_MINOR)
            await conn.execute(ADD_STOCK, skus, quantities, WAREHOUSE)
            await conn.execute(ADD_LEDGER, skus, quantities, WAREHOUSE)
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()


def bodies(skus: tuple[str, ...], count: int) -> list[bytes]:
    """``count`` order bodies, one line of quantity 1 each, the SKUs taken in turn."""
    return [
        orjson.dumps(
            {
                "items": [{"sku": skus[n % len(skus)], "quantity": 1}],
                "paymentMethod": "pm_card_visa",
                "shippingAddress": ADDRESS,
            }
        )
        for n in range(count)
    ]


async def stock_checks(pool: asyncpg.Pool, catalogue: Catalogue) -> dict[str, Any]:
    """Ledger against stock rows (every row), and the benchmark's stock at rest."""
    mismatches = [dict(r) for r in await pool.fetch(LEDGER_MISMATCHES)]
    spread = await pool.fetchrow(BENCH_STOCK, f"{SPREAD_PREFIX}%")
    hot = await pool.fetchrow(HOT_STOCK, HOT_SKU, WAREHOUSE)
    return {
        "ledger_mismatches": len(mismatches),
        "ledger_mismatch_rows": mismatches[:20],
        "spread": {
            "on_hand": int(spread["on_hand"]),
            "reserved": int(spread["reserved"]),
            "sold": int(spread["rows"]) * AMPLE_STOCK - int(spread["on_hand"]),
        },
        "hot": {"on_hand": int(hot["on_hand"]), "reserved": int(hot["reserved"])},
    }
