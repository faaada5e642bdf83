"""The Stripe gateway: PaymentIntents with manual capture, through the official ``stripe`` library.

authorize creates and confirms a PaymentIntent with ``capture_method="manual"``; capture,
void and refund map to ``capture``, ``cancel`` and ``refunds.create``. Every request carries the
caller's idempotency key, so Stripe replays the stored response of a repeated request instead
of acting twice.

The library's own network retries are off (``max_network_retries=0``): retrying is the
caller's job (our retry queues, with the same key), and two retry layers would multiply waits.

Errors are mapped as follows:
- ``CardError`` (HTTP 402) is a decline: ``PaymentResult(ok=False)``;
- connection errors, timeouts, 429, 409 (a concurrent request with the same key) and 5xx are
  ``GatewayUnavailable``;
- every other error (invalid request, unknown id, wrong state, bad key, idempotency key reused
  with other parameters) is ``PaymentError``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import stripe

from orderly.services.payments import GatewayUnavailable, PaymentError, PaymentResult

AUTHORIZED = "requires_capture"
DECLINED_STATUSES = frozenset({"requires_payment_method", "requires_action", "canceled"})
CAPTURED_STATUSES = frozenset({"succeeded", "processing"})
REFUNDED_STATUSES = frozenset({"succeeded", "pending"})

T = TypeVar("T")


class StripeGateway:
    """A ``PaymentGateway`` on Stripe. ``api_base`` points it elsewhere (a local stand-in)."""

    name = "stripe"

    def __init__(self, api_key: str, api_base: str | None = None, timeout: float = 10.0) -> None:
        self._http = stripe.HTTPXClient(timeout=timeout)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=0,
        )

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
        try:
            intent = await _call(
                self._client.v1.payment_intents.create_async(
                    {
                        "amount": amount_minor,
                        "currency": currency.lower(),
                        "payment_method": payment_method,
                        "capture_method": "manual",
                        "confirm": True,
                        "automatic_payment_methods": {
                            "enabled": True,
                            "allow_redirects": "never",
                        },
                        "metadata": {"order_id": order_id, "customer_id": customer_id},
                    },
                    {"idempotency_key": key},
                )
            )
        except stripe.CardError as error:
            return _declined(error, amount_minor)
        if intent.status == AUTHORIZED:
            return PaymentResult(ok=True, reference=intent.id, amount_minor=intent.amount)
        if intent.status in DECLINED_STATUSES:
            return _declined_intent(intent)
        raise PaymentError(f"PaymentIntent {intent.id} is {intent.status} after authorization")

    async def capture(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        intent = await _call(
            self._client.v1.payment_intents.capture_async(
                reference, {"amount_to_capture": amount_minor}, {"idempotency_key": key}
            )
        )
        if intent.status not in CAPTURED_STATUSES:
            raise PaymentError(f"PaymentIntent {intent.id} is {intent.status} after capture")
        return PaymentResult(ok=True, reference=intent.id, amount_minor=intent.amount_received)

    async def void(self, *, key: str, reference: str) -> PaymentResult:
        intent = await _call(
            self._client.v1.payment_intents.cancel_async(reference, None, {"idempotency_key": key})
        )
        return PaymentResult(ok=True, reference=intent.id, amount_minor=intent.amount)

    async def refund(self, *, key: str, reference: str, amount_minor: int) -> PaymentResult:
        refund = await _call(
            self._client.v1.refunds.create_async(
                {"payment_intent": reference, "amount": amount_minor},
                {"idempotency_key": key},
            )
        )
        if refund.status in REFUNDED_STATUSES:
            return PaymentResult(ok=True, reference=refund.id, amount_minor=refund.amount)
        return PaymentResult(
            ok=False,
            reference=refund.id,
            amount_minor=refund.amount,
            decline_code=refund.failure_reason or "refund_failed",
            message=f"The refund {refund.status or 'failed'}.",
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


async def _call(request: Awaitable[T]) -> T:
    """Await a Stripe request, turning every error but a card decline into ours."""
    try:
        return await request
    except stripe.CardError:
        raise
    except (stripe.APIConnectionError, stripe.RateLimitError) as error:
        raise GatewayUnavailable(_describe(error)) from error
    except stripe.StripeError as error:
        status = error.http_status
        if status is None or status >= 500 or status == 409:
            raise GatewayUnavailable(_describe(error)) from error
        raise PaymentError(_describe(error)) from error


def _describe(error: stripe.StripeError) -> str:
    code = f" ({error.code})" if error.code else ""
    status = f"HTTP {error.http_status}: " if error.http_status else ""
    return f"Stripe {type(error).__name__}{code}: {status}{error.user_message or 'no message'}"


def _declined(error: stripe.CardError, amount_minor: int) -> PaymentResult:
    details = error.error
    intent: Any = details.payment_intent if details is not None else None
    return PaymentResult(
        ok=False,
        reference=getattr(intent, "id", None),
        amount_minor=amount_minor,
        decline_code=_decline_code(
            details.decline_code if details is not None else None, error.code
        ),
        message=error.user_message or "Your card was declined.",
    )


def _declined_intent(intent: stripe.PaymentIntent) -> PaymentResult:
    last = intent.last_payment_error
    fallback = "authentication_required" if intent.status == "requires_action" else None
    return PaymentResult(
        ok=False,
        reference=intent.id,
        amount_minor=intent.amount,
        decline_code=_decline_code(
            last.decline_code if last else None, (last.code if last else None) or fallback
        ),
        message=(last.message if last else None) or "The payment was not authorized.",
    )


def _decline_code(decline_code: str | None, code: str | None) -> str:
    """The most specific reason: Stripe's decline_code ("insufficient_funds", "fraudulent"),
    except its catch-all "generic_decline", then the error code ("card_declined")."""
    if decline_code and decline_code != "generic_decline":
        return decline_code
    return code or "card_declined"
