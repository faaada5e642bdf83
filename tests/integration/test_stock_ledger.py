"""Every stock change is a ledger entry: on_hand and reserved reconcile from `stock_ledger`."""

from __future__ import annotations

import httpx
import sqlalchemy as sa

from tests.conftest import Backend

RECONCILE = """
SELECT s.sku, s.warehouse_id, s.on_hand, s.reserved,
       COALESCE(SUM(l.on_hand_delta), 0), COALESCE(SUM(l.reserved_delta), 0)
FROM stock s LEFT JOIN stock_ledger l ON l.sku = s.sku AND l.warehouse_id = s.warehouse_id
GROUP BY s.sku, s.warehouse_id, s.on_hand, s.reserved
"""


async def unreconciled(backend: Backend) -> list[tuple[object, ...]]:
    async with backend.container.engine.connect() as conn:
        rows = (await conn.execute(sa.text(RECONCILE))).all()
    return [tuple(r) for r in rows if (r[2], r[3]) != (r[4], r[5])]


async def test_the_seeded_catalogue_reconciles(backend: Backend) -> None:
    assert await unreconciled(backend) == []


async def test_an_admin_stock_change_is_an_adjustment(
    client: httpx.AsyncClient, admin: dict[str, str], backend: Backend
) -> None:
    for on_hand in (150, 3, 3, 0):
        response = await client.put(
            "/api/admin/inventory/PROD-001",
            json={"warehouseId": "WH-AUS", "onHand": on_hand},
            headers=admin,
        )
        assert response.status_code == 200, response.text
    assert await unreconciled(backend) == []
    async with backend.container.engine.connect() as conn:
        kinds = (
            await conn.execute(
                sa.text(
                    "SELECT kind, on_hand_delta FROM stock_ledger "
                    "WHERE sku = 'PROD-001' AND warehouse_id = 'WH-AUS' ORDER BY id"
                )
            )
        ).all()
        messages = await conn.scalar(
            sa.text("SELECT count(*) FROM outbox_messages WHERE type = 'stock.changed'")
        )
    # Opening stock 10, then +140, -147, (no change), -3: a repeat writes nothing.
    assert [tuple(k) for k in kinds] == [
        ("adjust", 10),
        ("adjust", 140),
        ("adjust", -147),
        ("adjust", -3),
    ]
    assert messages == 4
