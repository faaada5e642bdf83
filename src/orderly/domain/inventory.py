"""Stock allocation: which warehouses an order's lines are reserved from.

Pure planning over a snapshot of available stock; the adapter then applies the plan with
conditional updates (``on_hand - reserved >= n``) and plans again if it lost a race.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum


class AllocationStrategy(StrEnum):
    PRIORITY = "priority"
    """One warehouse that can ship everything, else split by warehouse priority."""
    MOST_STOCK = "most-stock"
    """One warehouse that can ship everything, else split taking the fullest first."""


class LedgerKind(StrEnum):
    RESERVE = "reserve"
    RELEASE = "release"
    SHIP = "ship"
    RESTOCK = "restock"
    ADJUST = "adjust"


class ReservationStatus(StrEnum):
    ACTIVE = "ACTIVE"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    SHIPPED = "SHIPPED"


@dataclass(frozen=True, slots=True)
class Available:
    """What one warehouse can still promise of one SKU."""

    sku: str
    warehouse_id: str
    priority: int
    available: int


@dataclass(frozen=True, slots=True)
class Pick:
    """Units of one SKU to reserve in one warehouse."""

    sku: str
    warehouse_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Shortfall:
    sku: str
    requested: int
    available: int


def plan_allocation(
    requested: Mapping[str, int],
    stock: Sequence[Available],
    strategy: AllocationStrategy = AllocationStrategy.PRIORITY,
) -> list[Pick] | list[Shortfall]:
    """Plan an all-or-nothing allocation of ``requested`` (sku → units).

    Returns the picks sorted by (sku, warehouse), the order rows are locked in, or the SKUs that
    cannot be covered.
    """
    by_sku: dict[str, list[Available]] = {}
    for row in stock:
        if row.available > 0:
            by_sku.setdefault(row.sku, []).append(row)
    short = [
        Shortfall(sku, units, sum(r.available for r in by_sku.get(sku, [])))
        for sku, units in sorted(requested.items())
        if sum(r.available for r in by_sku.get(sku, [])) < units
    ]
    if short:
        return short
    single = _single_warehouse(requested, by_sku)
    if single is not None:
        return sorted(
            (Pick(sku, single, units) for sku, units in requested.items()),
            key=lambda p: (p.sku, p.warehouse_id),
        )
    picks: list[Pick] = []
    for sku, units in requested.items():
        rows = sorted(by_sku[sku], key=_order_key(strategy))
        remaining = units
        for row in rows:
            take = min(row.available, remaining)
            picks.append(Pick(sku, row.warehouse_id, take))
            remaining -= take
            if remaining == 0:
                break
    return sorted(picks, key=lambda p: (p.sku, p.warehouse_id))


def _single_warehouse(
    requested: Mapping[str, int], by_sku: Mapping[str, Sequence[Available]]
) -> str | None:
    candidates: dict[str, int] | None = None
    for sku, units in requested.items():
        able = {r.warehouse_id: r.priority for r in by_sku[sku] if r.available >= units}
        if candidates is None:
            candidates = able
        else:
            candidates = {w: p for w, p in candidates.items() if w in able}
        if not candidates:
            return None
    if not candidates:
        return None
    return min(candidates, key=lambda w: (candidates[w], w))


def _order_key(strategy: AllocationStrategy):  # type: ignore[no-untyped-def]
    if strategy is AllocationStrategy.MOST_STOCK:
        return lambda r: (-r.available, r.priority, r.warehouse_id)
    return lambda r: (r.priority, r.warehouse_id)
