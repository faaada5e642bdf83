"""Request and response bodies of the HTTP API (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

from orderly.domain.orders import MAX_LINES, MAX_QUANTITY, OrderStatus

Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]


def _integral_float_to_int(value: Any) -> Any:
    # JSON Schema counts 2.0 as an integer; strings and booleans stay refused (strict).
    return int(value) if isinstance(value, float) and value.is_integer() else value


IntegralFloat = BeforeValidator(_integral_float_to_int)
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY), IntegralFloat]

# PostgreSQL text cannot hold NUL: refuse it here (422), not in the database (500).
_NO_NUL = r"[^\x00]*"
_VISIBLE = r"[^\s\x00]"
NO_NUL = rf"^{_NO_NUL}$"
# Surrounding whitespace is stripped before the length check, so these patterns tell the
# OpenAPI document that whitespace alone is too short.
ONE_VISIBLE = rf"^{_NO_NUL}{_VISIBLE}{_NO_NUL}$"
TWO_VISIBLE = rf"^{_NO_NUL}{_VISIBLE}{_NO_NUL}{_VISIBLE}{_NO_NUL}$"


def _no_nul(min_length: int, max_length: int) -> StringConstraints:
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_NUL)


Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=ONE_VISIBLE),
]


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class OrderItemIn(ApiModel):
    sku: Sku
    quantity: Quantity


class AddressIn(ApiModel):
    country: Annotated[
        str,
        StringConstraints(min_length=2, max_length=56, strip_whitespace=True, pattern=TWO_VISIBLE),
    ]
    city: Text
    line1: Text
    line2: Annotated[str, _no_nul(0, 200)] | None = None
    postal_code: Annotated[str, _no_nul(1, 20)]


def _document_one_form(schema: dict[str, Any]) -> None:
    """Say in the OpenAPI document what the model validator enforces: either ``items``, or
    ``productId`` with ``quantity``. The alternatives repeat the fields' own constraints, so
    that generators (schemathesis) need not merge them."""
    properties = schema["properties"]

    def present(name: str) -> Any:
        return next(s for s in properties[name]["anyOf"] if s.get("type") != "null")

    absent = {"type": "null"}
    schema["anyOf"] = [
        {
            "required": ["items"],
            "properties": {"items": present("items"), "productId": absent, "quantity": absent},
        },
        {
            "required": ["productId", "quantity"],
            "properties": {
                "items": absent,
                "productId": present("productId"),
                "quantity": present("quantity"),
            },
        },
    ]


class PlaceOrderIn(ApiModel):
    """Either ``items`` (with shipping address and payment method) or seed 000's single-item
    form ``{productId, quantity, userId}``; ``userId``, when given, must be the caller. Each
    SKU may appear on one line only."""

    model_config = ConfigDict(json_schema_extra=_document_one_form)

    items: Annotated[list[OrderItemIn], Field(min_length=1, max_length=MAX_LINES)] | None = None
    payment_method: Annotated[str, _no_nul(1, 128)] = "pm_card_visa"
    shipping_address: AddressIn | None = None
    product_id: Sku | None = None
    quantity: Quantity | None = None
    user_id: Annotated[str, _no_nul(1, 128)] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PlaceOrderIn:
        single = self.product_id is not None or self.quantity is not None
        if self.items is not None and single:
            raise ValueError("give either items or productId with quantity, not both")
        if self.items is None:
            if self.product_id is None or self.quantity is None:
                raise ValueError("give items, or productId with quantity")
            return self
        skus = [item.sku for item in self.items]
        duplicates = sorted({s for s in skus if skus.count(s) > 1})
        if duplicates:
            raise ValueError(f"each SKU may appear on one line only: {', '.join(duplicates)}")
        return self

    def lines(self) -> list[tuple[str, int]]:
        if self.items is not None:
            return [(item.sku, item.quantity) for item in self.items]
        assert self.product_id is not None
        assert self.quantity is not None
        return [(self.product_id, self.quantity)]


class LineOut(ApiModel):
    sku: str
    name: str
    quantity: int
    unit_price: int = Field(description="minor units")
    line_total: int = Field(description="minor units")


class OrderAccepted(ApiModel):
    order_id: str
    job_id: str = Field(description="id of the message that carries the order to the workers")
    status: OrderStatus
    total_amount: int = Field(description="minor units of `currency`")
    currency: str
    items: list[LineOut]


class PaymentSummary(ApiModel):
    status: str = Field(
        description="NONE, AUTHORIZED, DECLINED, VOIDED, CAPTURED, PARTIALLY_REFUNDED or REFUNDED"
    )
    gateway: str | None = None
    reference: str | None = Field(default=None, description="the gateway's payment id")
    authorized: int
    captured: int
    refunded: int
    decline_code: str | None = None
    message: str | None = None


class PickingLine(ApiModel):
    sku: str
    quantity: int


class ShipmentOut(ApiModel):
    id: str
    warehouse_id: str
    status: str = Field(description="REQUESTED, SHIPPED, FAILED, CANCELLED or RETURNED")
    picking_list: list[PickingLine]
    value: int = Field(description="value of the shipped lines, in minor units")
    updated_at: str


class AddressOut(ApiModel):
    model_config = ConfigDict(extra="allow")
    country: str
    city: str
    line1: str
    line2: str | None = None
    postal_code: str


class OrderOut(ApiModel):
    order_id: str
    customer_id: str
    status: OrderStatus
    failure_reason: str | None
    currency: str
    total_amount: int
    payment_method: str
    shipping_address: AddressOut | None
    items: list[LineOut]
    payment: PaymentSummary
    shipments: list[ShipmentOut]
    version: int
    created_at: str
    updated_at: str


class OrderPage(ApiModel):
    items: list[OrderOut]
    page: int
    size: int
    total: int


class EventOut(ApiModel):
    version: int
    type: str
    data: dict[str, Any]
    occurred_at: str
    correlation_id: str
    causation_id: str | None


class ProductOut(ApiModel):
    sku: str
    name: str
    price: int = Field(description="minor units")
    currency: str
    available: int


class WarehouseStock(ApiModel):
    warehouse_id: str
    on_hand: int
    reserved: int
    available: int


class InventoryOut(ApiModel):
    sku: str
    available: int
    reserved: int
    on_hand: int
    warehouses: list[WarehouseStock]


class SetStockIn(ApiModel):
    warehouse_id: Annotated[str, _no_nul(1, 64)]
    on_hand: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000), IntegralFloat]


class DevLoginIn(ApiModel):
    user_id: Annotated[
        str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")
    ]
    admin: bool = False


class TokenOut(ApiModel):
    token: str
    token_type: str = "Bearer"  # noqa: S105
    user_id: str
    role: str


class Health(ApiModel):
    status: str


class CancelAccepted(ApiModel):
    order_id: str
    cancellation: str = Field(
        description="`cancelling` (compensation is running) or `cancelled` (already done)"
    )


class ReviewIn(ApiModel):
    decision: Literal["approve", "reject"]


class ReviewAccepted(ApiModel):
    order_id: str
    decision: Literal["approve", "reject"]


class RefundIn(ApiModel):
    amount: int = Field(gt=0, le=10**12, description="minor units, at most what is left captured")


class RefundAccepted(ApiModel):
    order_id: str
    refund_id: str
    amount: int
