"""Stock allocation: which warehouses an order's lines are reserved from."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderly.domain.inventory import (
    AllocationStrategy,
    Available,
    Pick,
    Shortfall,
    plan_allocation,
)

PRIORITY = {"WH-AUS": 1, "WH-NYC": 2, "WH-LON": 3}


def stock(*rows: tuple[str, str, int]) -> list[Available]:
    return [Available(sku, wh, PRIORITY[wh], available) for sku, wh, available in rows]


def picks(plan: Sequence[Pick | Shortfall]) -> list[tuple[str, str, int]]:
    assert all(isinstance(p, Pick) for p in plan), plan
    return [(p.sku, p.warehouse_id, p.quantity) for p in plan if isinstance(p, Pick)]


# --- one warehouse first -----------------------------------------------------------------------


def test_one_warehouse_that_can_ship_everything_is_preferred() -> None:
    rows = stock(
        ("A", "WH-AUS", 5),
        ("A", "WH-NYC", 5),
        ("B", "WH-AUS", 1),  # WH-AUS, the first by priority, cannot ship both B
        ("B", "WH-NYC", 2),
    )
    assert picks(plan_allocation({"A": 3, "B": 2}, rows)) == [
        ("A", "WH-NYC", 3),
        ("B", "WH-NYC", 2),
    ]


@pytest.mark.parametrize("strategy", list(AllocationStrategy))
def test_priority_breaks_a_tie_between_warehouses_that_can_each_ship_everything(
    strategy: AllocationStrategy,
) -> None:
    rows = stock(
        ("A", "WH-LON", 50),
        ("A", "WH-NYC", 9),
        ("A", "WH-AUS", 4),
        ("B", "WH-LON", 50),
        ("B", "WH-NYC", 9),
        ("B", "WH-AUS", 4),
    )
    assert picks(plan_allocation({"A": 4, "B": 4}, rows, strategy)) == [
        ("A", "WH-AUS", 4),
        ("B", "WH-AUS", 4),
    ]
    assert picks(plan_allocation({"A": 5, "B": 1}, rows, strategy)) == [
        ("A", "WH-NYC", 5),
        ("B", "WH-NYC", 1),
    ]


def test_the_warehouse_id_breaks_a_tie_of_priorities() -> None:
    rows = [Available("A", "WH-2", 1, 3), Available("A", "WH-1", 1, 3)]
    assert picks(plan_allocation({"A": 2}, rows)) == [("A", "WH-1", 2)]


# --- splitting ---------------------------------------------------------------------------------


def test_split_by_priority_when_no_warehouse_can_ship_everything() -> None:
    rows = stock(
        ("A", "WH-LON", 10),
        ("A", "WH-NYC", 3),
        ("A", "WH-AUS", 2),
        ("B", "WH-NYC", 1),
    )
    assert picks(plan_allocation({"A": 6, "B": 1}, rows)) == [
        ("A", "WH-AUS", 2),
        ("A", "WH-LON", 1),
        ("A", "WH-NYC", 3),
        ("B", "WH-NYC", 1),
    ]


def test_split_by_most_stock_takes_the_fullest_warehouse_first() -> None:
    rows = stock(
        ("A", "WH-AUS", 2),
        ("A", "WH-NYC", 3),
        ("A", "WH-LON", 4),
        ("B", "WH-AUS", 1),
    )
    plan = plan_allocation({"A": 6, "B": 1}, rows, AllocationStrategy.MOST_STOCK)
    assert picks(plan) == [
        ("A", "WH-LON", 4),
        ("A", "WH-NYC", 2),
        ("B", "WH-AUS", 1),
    ]


def test_most_stock_breaks_a_tie_of_stock_by_priority() -> None:
    rows = stock(("A", "WH-LON", 3), ("A", "WH-NYC", 3), ("A", "WH-AUS", 1), ("B", "WH-AUS", 1))
    plan = plan_allocation({"A": 4, "B": 1}, rows, AllocationStrategy.MOST_STOCK)
    assert picks(plan) == [("A", "WH-LON", 1), ("A", "WH-NYC", 3), ("B", "WH-AUS", 1)]


def test_the_demo_catalogue_splits_headphones_across_both_warehouses() -> None:
    rows = stock(("PROD-001", "WH-AUS", 10), ("PROD-001", "WH-NYC", 5))
    assert picks(plan_allocation({"PROD-001": 12}, rows)) == [
        ("PROD-001", "WH-AUS", 10),
        ("PROD-001", "WH-NYC", 2),
    ]
    assert picks(plan_allocation({"PROD-001": 10}, rows)) == [("PROD-001", "WH-AUS", 10)]


# --- shortfalls --------------------------------------------------------------------------------


def test_a_shortfall_lists_every_short_sku_with_requested_and_available() -> None:
    rows = stock(
        ("A", "WH-AUS", 2),
        ("A", "WH-NYC", 1),
        ("B", "WH-AUS", 9),
        ("C", "WH-NYC", 0),
        ("D", "WH-AUS", -2),  # over-reserved: counts as nothing, not as minus two
        ("D", "WH-NYC", 1),
    )
    plan = plan_allocation({"D": 2, "B": 1, "A": 4, "C": 1, "E": 1}, rows)
    assert plan == [
        Shortfall("A", 4, 3),
        Shortfall("C", 1, 0),
        Shortfall("D", 2, 1),
        Shortfall("E", 1, 0),
    ]


def test_picks_are_sorted_by_sku_then_warehouse() -> None:
    rows = stock(
        ("Z", "WH-NYC", 1),
        ("Z", "WH-AUS", 1),
        ("M", "WH-LON", 5),
        ("A", "WH-NYC", 2),
    )
    plan = picks(plan_allocation({"Z": 2, "M": 5, "A": 2}, rows))
    assert plan == sorted(plan)
    assert [(sku, wh) for sku, wh, _ in plan] == [
        ("A", "WH-NYC"),
        ("M", "WH-LON"),
        ("Z", "WH-AUS"),
        ("Z", "WH-NYC"),
    ]


def test_rows_without_stock_are_ignored() -> None:
    rows = stock(
        ("A", "WH-AUS", 0),
        ("A", "WH-NYC", 4),
        ("B", "WH-AUS", 0),
        ("B", "WH-NYC", 0),
        ("B", "WH-LON", 2),
    )
    plan = picks(plan_allocation({"A": 4, "B": 2}, rows))
    assert plan == [("A", "WH-NYC", 4), ("B", "WH-LON", 2)]
    assert all(quantity > 0 for _, _, quantity in plan)


def test_nothing_requested_picks_nothing() -> None:
    assert plan_allocation({}, stock(("A", "WH-AUS", 1))) == []


# --- any stock, any request --------------------------------------------------------------------

SKUS = ["A", "B", "C", "D"]
WAREHOUSES = ["W1", "W2", "W3", "W4"]


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[dict[str, int], list[Available]]:
    priorities = {w: draw(st.integers(1, 3)) for w in WAREHOUSES}
    rows = [
        Available(sku, wh, priorities[wh], draw(st.integers(-2, 8)))
        for sku in SKUS
        for wh in WAREHOUSES
        if draw(st.integers(0, 3)) > 0  # most SKUs are stocked in most warehouses
    ]
    wanted = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=len(SKUS), unique=True))
    requested = {sku: draw(st.integers(1, 14)) for sku in wanted}
    return requested, rows


def _available(rows: Sequence[Available]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for row in rows:
        total[row.sku] += max(row.available, 0)
    return total


def _check_plan(
    requested: Mapping[str, int],
    rows: Sequence[Available],
    plan: Sequence[Pick | Shortfall],
) -> list[Pick]:
    available = _available(rows)
    short = {sku for sku, units in requested.items() if available[sku] < units}
    if short:
        assert plan == [Shortfall(s, requested[s], available[s]) for s in sorted(short)]
        return []
    assert all(isinstance(p, Pick) for p in plan)
    chosen = [p for p in plan if isinstance(p, Pick)]
    assert [(p.sku, p.warehouse_id) for p in chosen] == sorted(
        {(p.sku, p.warehouse_id) for p in chosen}
    ), "picks are unsorted or repeat a row"
    row_of = {(r.sku, r.warehouse_id): r for r in rows}
    covered: dict[str, int] = defaultdict(int)
    for pick in chosen:
        assert pick.quantity > 0
        assert pick.quantity <= row_of[(pick.sku, pick.warehouse_id)].available
        covered[pick.sku] += pick.quantity
    assert dict(covered) == dict(requested)
    return chosen


@settings(max_examples=100, deadline=None)
@given(snapshots(), st.sampled_from(list(AllocationStrategy)))
def test_a_plan_covers_the_request_exactly_or_names_every_shortfall(
    snapshot: tuple[dict[str, int], list[Available]], strategy: AllocationStrategy
) -> None:
    requested, rows = snapshot
    chosen = _check_plan(requested, rows, plan_allocation(requested, rows, strategy))
    if not chosen:
        return
    able = [
        w
        for w in WAREHOUSES
        if all(
            any(r.sku == s and r.warehouse_id == w and r.available >= n for r in rows)
            for s, n in requested.items()
        )
    ]
    if able:
        priority = {r.warehouse_id: r.priority for r in rows}
        best = min(able, key=lambda w: (priority[w], w))
        assert {p.warehouse_id for p in chosen} == {best}, "one warehouse could ship it all"


@settings(max_examples=60, deadline=None)
@given(snapshots())
def test_a_priority_split_uses_each_warehouse_up_before_the_next(
    snapshot: tuple[dict[str, int], list[Available]],
) -> None:
    requested, rows = snapshot
    chosen = _check_plan(requested, rows, plan_allocation(requested, rows))
    if len({p.warehouse_id for p in chosen}) <= 1:
        return
    for sku in requested:
        order = sorted(
            (r for r in rows if r.sku == sku and r.available > 0),
            key=lambda r: (r.priority, r.warehouse_id),
        )
        taken = {p.warehouse_id: p.quantity for p in chosen if p.sku == sku}
        used = [r for r in order if r.warehouse_id in taken]
        assert used == order[: len(used)], f"{sku}: skipped a warehouse of better priority"
        assert all(taken[r.warehouse_id] == r.available for r in used[:-1])
