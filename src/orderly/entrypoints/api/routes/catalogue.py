"""Products and stock levels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from orderly.entrypoints.api.deps import AdminDep, ContainerDep, PrincipalDep
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.schemas import NO_NUL, InventoryOut, ProductOut, SetStockIn
from orderly.services import inventory
from orderly.services.ports import JSON, StockChange

router = APIRouter(tags=["catalogue"])

SkuParam = Annotated[str, Path(pattern=NO_NUL)]


@router.get(
    "/api/products",
    response_model=list[ProductOut],
    summary="The catalogue with prices and available stock",
    responses=problem_responses(503),
)
async def list_products(container: ContainerDep) -> list[JSON]:
    return await container.views.products()


async def _inventory_or_404(container: ContainerDep, sku: str) -> JSON:
    view = await container.views.inventory(sku)
    if view is None:
        raise ProblemError(404, "not-found", f"no product {sku}")
    return view


@router.get(
    "/api/inventory/{sku}",
    response_model=InventoryOut,
    summary="Stock of one SKU, in total and per warehouse",
    responses=problem_responses(401, 404, 503),
)
async def get_inventory(sku: SkuParam, container: ContainerDep, _principal: PrincipalDep) -> JSON:
    return await _inventory_or_404(container, sku)


@router.put(
    "/api/admin/inventory/{sku}",
    response_model=InventoryOut,
    summary="Set a warehouse's on-hand count for a SKU (admin)",
    tags=["admin"],
    responses=problem_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def set_stock(
    sku: SkuParam, body: SetStockIn, container: ContainerDep, _admin: AdminDep
) -> JSON:
    try:
        await inventory.set_on_hand(
            container.uow, StockChange(sku, body.warehouse_id, body.on_hand)
        )
    except inventory.UnknownSku as exc:
        raise ProblemError(404, "not-found", f"no product {sku}") from exc
    except inventory.UnknownWarehouse as exc:
        raise ProblemError(422, "unknown-warehouse", f"no warehouse {body.warehouse_id}") from exc
    except inventory.BelowReserved as exc:
        raise ProblemError(409, "below-reserved", str(exc)) from exc
    return await _inventory_or_404(container, sku)
