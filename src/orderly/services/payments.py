"""The payment gateway port: two-phase card payments (authorize, then capture or void; refund).

The saga authorizes after the fraud check, voids as the compensation of an authorization,
captures once fulfilment is confirmed (partially for a partial shipment) and refunds as the
compensation of a capture. Every call carries an idempotency key that the caller derives from
the order and the step, so a retried step never charges twice.

Outcomes come in three kinds:
- a ``PaymentResult``: the gateway answered. A card decline is ``ok=False`` with a decline
  code, a business outcome rather than an error;
- ``GatewayUnavailable``: transient, retry later with the same key;
- ``PaymentError``: the gateway refused the request itself; retrying cannot help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """What the gateway answered.

    ``reference`` is the gateway's id: the PaymentIntent id for authorize, capture and void, the
    refund id for a refund. ``amount_minor`` is the amount authorized, captured, voided or
    refunded. When ``ok`` is False, ``decline_code`` says why ("card_declined",
    "insufficient_funds", "expired_card", "fraudulent", ...) and ``message`` is a sentence
    for the shopper or operator.
    """

    ok: bool
    reference: str | None
    amount_minor: int
    decline_code: str | None = None
    message: str | None = None


class GatewayUnavailable(Exception):
    """Transient: network error, timeout, 5xx, 429. The caller retries with the same key."""


class PaymentError(Exception):
    """Permanent: the gateway refused the request itself (bad amount, unknown reference,
    invalid state). Retrying cannot help."""


class PaymentGateway(Protocol):
    """Two-phase card payments. Every call carries an idempotency key derived from the order
    and step (never the client's key); the same key repeats the same outcome.

    A card decline is ``PaymentResult(ok=False, ...)``, never an exception.
    """

    name: str

    async def authorize(
        self,
        *,
        key: str,
        order_id: str,
        amount_minor: int,
        currency: str,
        payment_method: str,
        customer_id: str,
    ) -> PaymentResult:
        """Hold ``amount_minor`` on the card; the reference is what capture and void take."""
        ...

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        """Take up to the authorized amount, once; a smaller amount releases the rest."""
        ...

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        """Release an authorization that was not captured."""
        ...

    async def refund(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        """Give back part or all of a capture; refunds add up to at most the captured amount."""
        ...

    async def close(self) -> None:
        """Release connections; the gateway is not used afterwards."""
        ...
