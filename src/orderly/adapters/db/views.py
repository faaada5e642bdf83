"""Read side: orders, events, products and stock as the API shows them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orderly.adapters.db.engine import READ_ONLY
from orderly.adapters.db.errors import is_connection_problem
from orderly.adapters.db.tables import (
    order_events,
    order_lines,
    orders,
    payments,
    products,
    shipments,
    stock,
)
from orderly.services.ports import JSON, Page, StorageUnavailable


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _line(row: Any) -> JSON:
    return {
        "sku": row.sku,
        "name": row.name,
        "quantity": row.quantity,
        "unitPrice": row.unit_price_minor,
        "lineTotal": row.unit_price_minor * row.quantity,
    }


def _payment(row: Any) -> JSON:
    if row is None:
        return {
            "status": "NONE",
            "gateway": None,
            "reference": None,
            "authorized": 0,
            "captured": 0,
            "refunded": 0,
            "declineCode": None,
            "message": None,
        }
    return {
        "status": row.status,
        "gateway": row.gateway,
        "reference": row.reference,
        "authorized": row.authorized_minor,
        "captured": row.captured_minor,
        "refunded": row.refunded_minor,
        "declineCode": row.decline_code,
        "message": row.message,
    }


def _shipment(row: Any) -> JSON:
    return {
        "id": row.id,
        "warehouseId": row.warehouse_id,
        "status": row.status,
        "pickingList": [{"sku": x["sku"], "quantity": x["quantity"]} for x in row.lines],
        "value": row.value_minor,
        "updatedAt": iso(row.updated_at),
    }


def _order(
    row: Any, lines: list[JSON], payment: JSON | None = None, shipped: list[JSON] | None = None
) -> JSON:
    return {
        "orderId": row.id,
        "customerId": row.customer_id,
        "status": row.status,
        "failureReason": row.failure_reason,
        "currency": row.currency,
        "totalAmount": row.total_minor,
        "paymentMethod": row.payment_method,
        "shippingAddress": row.shipping_address,
        "items": lines,
        "payment": payment or _payment(None),
        "shipments": shipped or [],
        "version": row.version,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
    }


class SqlViews:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(**{READ_ONLY: True})
                yield conn
        except Exception as exc:
            if is_connection_problem(exc, socket_errors=True):
                raise StorageUnavailable(str(exc)) from exc
            raise

    async def order(self, order_id: str) -> JSON | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()
            if row is None:
                return None
            lines = await conn.execute(
                sa.select(order_lines)
                .where(order_lines.c.order_id == order_id)
                .order_by(order_lines.c.line_no)
            )
            line_list = [_line(line) for line in lines]
            payment = (
                await conn.execute(sa.select(payments).where(payments.c.order_id == order_id))
            ).first()
            shipped = await conn.execute(
                sa.select(shipments)
                .where(shipments.c.order_id == order_id)
                .order_by(shipments.c.id)
            )
            return _order(row, line_list, _payment(payment), [_shipment(x) for x in shipped])

    async def orders(
        self, *, customer_id: str | None, status: str | None, page: int, size: int
    ) -> Page:
        where: list[sa.ColumnElement[bool]] = []
        if customer_id is not None:
            where.append(orders.c.customer_id == customer_id)
        if status is not None:
            where.append(orders.c.status == status)
        async with self._read() as conn:
            total = await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(*where))
            rows = (
                await conn.execute(
                    sa.select(orders)
                    .where(*where)
                    .order_by(orders.c.created_at.desc(), orders.c.id)
                    .limit(size)
                    .offset((page - 1) * size)
                )
            ).all()
            by_order: dict[str, list[JSON]] = {r.id: [] for r in rows}
            if by_order:
                lines = await conn.execute(
                    sa.select(order_lines)
                    .where(order_lines.c.order_id.in_(list(by_order)))
                    .order_by(order_lines.c.order_id, order_lines.c.line_no)
                )
                for line in lines:
                    by_order[line.order_id].append(_line(line))
        items = [_order(r, by_order[r.id]) for r in rows]
        return Page(items=items, page=page, size=size, total=int(total or 0))

    async def events(self, order_id: str) -> list[JSON]:
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(order_events)
                .where(order_events.c.order_id == order_id)
                .order_by(order_events.c.version)
            )
            return [
                {
                    "version": r.version,
                    "type": r.type,
                    "data": r.data,
                    "occurredAt": iso(r.occurred_at),
                    "correlationId": r.correlation_id,
                    "causationId": r.causation_id,
                }
                for r in rows
            ]

    async def products(self) -> list[JSON]:
        available = (
            sa.select(
                stock.c.sku,
                sa.func.sum(stock.c.on_hand - stock.c.reserved).label("available"),
            )
            .group_by(stock.c.sku)
            .subquery()
        )
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(products, sa.func.coalesce(available.c.available, 0).label("available"))
                .outerjoin(available, available.c.sku == products.c.sku)
                .where(products.c.active)
                .order_by(products.c.sku)
            )
            return [
                {
                    "sku": r.sku,
                    "name": r.name,
                    "price": r.price_minor,
                    "currency": r.currency,
                    "available": int(r.available),
                }
                for r in rows
            ]

    async def inventory(self, sku: str) -> JSON | None:
        async with self._read() as conn:
            known = await conn.scalar(sa.select(products.c.sku).where(products.c.sku == sku))
            if known is None:
                return None
            rows = (
                await conn.execute(
                    sa.select(stock).where(stock.c.sku == sku).order_by(stock.c.warehouse_id)
                )
            ).all()
        warehouses = [
            {
                "warehouseId": r.warehouse_id,
                "onHand": r.on_hand,
                "reserved": r.reserved,
                "available": r.on_hand - r.reserved,
            }
            for r in rows
        ]
        on_hand = sum(w["onHand"] for w in warehouses)
        reserved = sum(w["reserved"] for w in warehouses)
        return {
            "sku": sku,
            "available": on_hand - reserved,
            "reserved": reserved,
            "onHand": on_hand,
            "warehouses": warehouses,
        }

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(sa.text("SELECT 1"))
