"""A local stand-in for the Stripe API endpoints the Stripe gateway calls.

It speaks Stripe's wire format: form-encoded request bodies (``metadata[order_id]=...``), JSON
objects in Stripe's shapes, Stripe's error JSON (a card decline is HTTP 402 with
``{"error": {"type": "card_error", "code": ..., "decline_code": ..., "message": ...}}``), a
``Bearer sk_test_...`` key, and the Idempotency-Key header: a repeated key with the same request
replays the stored response (with ``Idempotent-Replayed: true``) without acting again; with other
parameters it is an ``idempotency_error``. Keys are scoped to the API key, and every answer of
the API is stored, errors included (Stripe itself does not store parameter validation errors).
Stripe's test payment methods behave as in test mode.

Endpoints: POST /v1/payment_intents, /v1/payment_intents/{id}/capture,
/v1/payment_intents/{id}/cancel and /v1/refunds.

It runs on 127.0.0.1, on a free port, in the test's own event loop::

    async with StripeStandin() as standin:
        gateway = StripeGateway(API_KEY, api_base=standin.url)

``fail_next(n, kind="500" | "429" | "drop")`` makes the next n requests fail: a 500 with
Stripe's ``api_error`` body, a 429 ``rate_limit`` error, or a connection closed without any
response. By default the failure happens in front of the API (nothing is done or stored, like
a failing load balancer); with ``after_effect=True`` the request is carried out and its response
stored, and only the answer is lost, so a retry with the same key must get the stored response.

``requests`` records every request seen (path, idempotency key, form, what happened to it).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web

HOST = "127.0.0.1"
API_KEY = "sk_test_orderly_standin"

JSON = dict[str, Any]
Outcome = Literal["applied", "replayed", "rejected", "failed", "dropped"]
FailureKind = Literal["500", "429", "drop"]

APPROVING_CARDS = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex"})
# payment method -> (code, decline_code, message), as Stripe's test mode answers them
DECLINING_CARDS: dict[str, tuple[str, str, str]] = {
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclinedExpiredCard": ("expired_card", "expired_card", "Your card has expired."),
    "pm_card_chargeDeclinedFraudulent": ("card_declined", "fraudulent", "Your card was declined."),
}
AUTHENTICATION_CARD = "pm_card_authenticationRequired"


@dataclass(frozen=True)
class SeenRequest:
    """One request as the stand-in received it, and what it did with it.

    ``outcome``: "applied" (the API handled it; ``status`` says how it answered, 402 for a
    decline), "replayed" (answered from the idempotency store), "rejected" (refused before the
    API: bad key, idempotency key reused with other parameters), "failed" or "dropped" (an
    injected failure; with ``after_effect`` the request was carried out first).
    """

    method: str
    path: str
    idempotency_key: str | None
    form: dict[str, str]
    outcome: Outcome
    status: int | None


@dataclass
class _Failure:
    kind: FailureKind
    after_effect: bool


@dataclass
class _Stored:
    request: tuple[str, str, tuple[tuple[str, str], ...]]
    status: int
    body: JSON


class _ApiError(Exception):
    def __init__(self, status: int, error: JSON) -> None:
        super().__init__(error.get("message"))
        self.status = status
        self.error = error


@dataclass
class StripeStandin:
    """The stand-in server and its state (intents, refunds, idempotency records)."""

    api_key_prefix: str = "sk_test_"
    requests: list[SeenRequest] = field(default_factory=list)
    intents: dict[str, JSON] = field(default_factory=dict)
    refunds: dict[str, JSON] = field(default_factory=dict)
    _stored: dict[tuple[str, str], _Stored] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int | None = None

    @property
    def url(self) -> str:
        """The base URL to pass as the gateway's ``api_base``."""
        if self._port is None:
            raise RuntimeError("the Stripe stand-in is not running")
        return f"http://{HOST}:{self._port}"

    def fail_next(
        self, count: int = 1, *, kind: FailureKind = "500", after_effect: bool = False
    ) -> None:
        """Fail the next ``count`` requests (see the module docstring)."""
        self._failures.extend(_Failure(kind, after_effect) for _ in range(count))

    def seen(self, path_suffix: str = "", outcome: Outcome | None = None) -> list[SeenRequest]:
        """Requests whose path ends with ``path_suffix`` (and had ``outcome``, if given)."""
        return [
            r
            for r in self.requests
            if r.path.endswith(path_suffix) and (outcome is None or r.outcome == outcome)
        ]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/payment_intents", self._create_intent)
        app.router.add_post("/v1/payment_intents/{intent}/capture", self._capture)
        app.router.add_post("/v1/payment_intents/{intent}/cancel", self._cancel)
        app.router.add_post("/v1/refunds", self._create_refund)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the HTTP layer: failures, authentication, idempotency --------------------------------

    async def _create_intent(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._apply_create_intent)

    async def _capture(self, request: web.Request) -> web.StreamResponse:
        intent_id = request.match_info["intent"]
        return await self._serve(request, lambda form: self._apply_capture(intent_id, form))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        intent_id = request.match_info["intent"]
        return await self._serve(request, lambda form: self._apply_cancel(intent_id))

    async def _create_refund(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._apply_refund)

    async def _serve(
        self, request: web.Request, action: Callable[[dict[str, str]], JSON]
    ) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        key = request.headers.get("Idempotency-Key")

        def record(outcome: Outcome, status: int | None) -> None:
            self.requests.append(
                SeenRequest(request.method, request.path, key, form, outcome, status)
            )

        failure = self._failures.pop(0) if self._failures else None
        if failure is not None and not failure.after_effect:
            record(*_failed(failure))
            return _fail(request, failure)

        auth_error = self._check_key(request.headers.get("Authorization", ""))
        if auth_error is not None:
            record("rejected", 401)
            return _json(401, {"error": auth_error})

        fingerprint = (request.method, request.path, tuple(sorted(form.items())))
        stored = self._stored.get((request.headers["Authorization"], key)) if key else None
        if stored is not None:
            if stored.request != fingerprint:
                record("rejected", 400)
                return _json(400, {"error": _idempotency_error(key or "")})
            record("replayed", stored.status)
            return _json(stored.status, stored.body, replayed=True)

        try:
            status, body = 200, action(form)
        except _ApiError as error:
            status, body = error.status, {"error": error.error}
        if key:
            self._stored[(request.headers["Authorization"], key)] = _Stored(
                fingerprint, status, body
            )
        if failure is not None:
            record(*_failed(failure))
            return _fail(request, failure)
        record("applied", status)
        return _json(status, body)

    def _check_key(self, authorization: str) -> JSON | None:
        scheme, _, api_key = authorization.partition(" ")
        if scheme == "Bearer" and api_key.startswith(self.api_key_prefix) and len(api_key) > 8:
            return None
        return {
            "type": "invalid_request_error",
            "message": f"Invalid API Key provided: {api_key[:12]}***",
        }

    # --- the API: what Stripe does ---------------------------------------------------------

    def _apply_create_intent(self, form: Mapping[str, str]) -> JSON:
        amount = _positive_int(form, "amount")
        currency = form.get("currency", "")
        if len(currency) != 3 or currency != currency.lower():
            raise _ApiError(400, _invalid("Invalid currency: " + currency, "currency"))
        payment_method = form.get("payment_method")
        redirects_allowed = form.get("automatic_payment_methods[allow_redirects]") != "never"
        if (
            form.get("automatic_payment_methods[enabled]") == "true"
            and redirects_allowed
            and form.get("confirm") == "true"
            and "return_url" not in form
        ):
            raise _ApiError(
                400,
                _invalid(
                    "This PaymentIntent is configured to accept payment methods enabled in your "
                    "Dashboard, which may require a return_url. Pass return_url or set "
                    "automatic_payment_methods[allow_redirects]=never.",
                    "return_url",
                ),
            )
        intent = self._new_intent(form, amount, currency, payment_method)
        if form.get("confirm") != "true":
            intent["status"] = "requires_confirmation"
        elif payment_method is None:
            raise _ApiError(400, _invalid("You must provide a payment_method.", "payment_method"))
        elif payment_method in DECLINING_CARDS:
            code, decline_code, message = DECLINING_CARDS[payment_method]
            charge = "ch_" + uuid.uuid4().hex[:24]
            error = {
                "type": "card_error",
                "code": code,
                "decline_code": decline_code,
                "message": message,
                "charge": charge,
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            }
            intent.update(status="requires_payment_method", latest_charge=charge)
            intent["last_payment_error"] = dict(error)
            raise _ApiError(402, {**error, "payment_intent": dict(intent)})
        elif payment_method == AUTHENTICATION_CARD:
            intent.update(status="requires_action", next_action={"type": "use_stripe_sdk"})
        elif payment_method in APPROVING_CARDS:
            capturable = form.get("capture_method") == "manual"
            intent.update(
                status="requires_capture" if capturable else "succeeded",
                amount_capturable=amount if capturable else 0,
                amount_received=0 if capturable else amount,
                latest_charge="ch_" + uuid.uuid4().hex[:24],
            )
        else:
            del self.intents[intent["id"]]
            raise _ApiError(
                400,
                {
                    **_invalid(f"No such PaymentMethod: '{payment_method}'", "payment_method"),
                    "code": "resource_missing",
                },
            )
        return dict(intent)

    def _apply_capture(self, intent_id: str, form: Mapping[str, str]) -> JSON:
        intent = self._intent(intent_id)
        self._require_status(intent, "captured", {"requires_capture"})
        amount = (
            _positive_int(form, "amount_to_capture")
            if "amount_to_capture" in form
            else intent["amount_capturable"]
        )
        if amount > intent["amount_capturable"]:
            raise _ApiError(
                400,
                {
                    **_invalid(
                        f"The amount_to_capture ({amount}) must be less than or equal to the "
                        f"PaymentIntent's amount_capturable ({intent['amount_capturable']}).",
                        "amount_to_capture",
                    ),
                    "code": "amount_too_large",
                },
            )
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        return dict(intent)

    def _apply_cancel(self, intent_id: str) -> JSON:
        intent = self._intent(intent_id)
        self._require_status(
            intent,
            "canceled",
            {
                "requires_payment_method",
                "requires_capture",
                "requires_confirmation",
                "requires_action",
            },
        )
        intent.update(status="canceled", amount_capturable=0, canceled_at=int(time.time()))
        return dict(intent)

    def _apply_refund(self, form: Mapping[str, str]) -> JSON:
        intent_id = form.get("payment_intent")
        if intent_id is None:
            raise _ApiError(400, _invalid("You must pass a charge or a payment_intent.", None))
        intent = self._intent(intent_id, param="payment_intent")
        if intent["status"] != "succeeded":
            raise _ApiError(
                400,
                {
                    **_invalid(
                        f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                        "refund.",
                        "payment_intent",
                    ),
                    "code": "charge_not_refundable",
                },
            )
        refunded = sum(
            r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent_id
        )
        unrefunded = intent["amount_received"] - refunded
        amount = _positive_int(form, "amount") if "amount" in form else unrefunded
        if unrefunded == 0:
            raise _ApiError(
                400,
                {
                    **_invalid(
                        f"Charge {intent['latest_charge']} has already been refunded.", None
                    ),
                    "code": "charge_already_refunded",
                },
            )
        if amount > unrefunded:
            raise _ApiError(
                400,
                {
                    **_invalid(
                        f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                        f"({unrefunded})",
                        "amount",
                    ),
                    "code": "amount_too_large",
                },
            )
        refund: JSON = {
            "id": "re_" + uuid.uuid4().hex[:24],
            "object": "refund",
            "amount": amount,
            "charge": intent["latest_charge"],
            "created": int(time.time()),
            "currency": intent["currency"],
            "metadata": {},
            "payment_intent": intent_id,
            "reason": None,
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        return dict(refund)

    def _new_intent(
        self, form: Mapping[str, str], amount: int, currency: str, payment_method: str | None
    ) -> JSON:
        intent_id = "pi_" + uuid.uuid4().hex[:24]
        metadata = {
            k.removeprefix("metadata[").removesuffix("]"): v
            for k, v in form.items()
            if k.startswith("metadata[")
        }
        intent: JSON = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": form.get("capture_method", "automatic_async"),
            "client_secret": f"{intent_id}_secret_{uuid.uuid4().hex[:24]}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "customer": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "payment_method": payment_method,
            "payment_method_types": ["card"],
            "status": "requires_payment_method",
        }
        self.intents[intent_id] = intent
        return intent

    def _intent(self, intent_id: str, param: str = "intent") -> JSON:
        intent = self.intents.get(intent_id)
        if intent is None:
            raise _ApiError(
                404,
                {
                    **_invalid(f"No such payment_intent: '{intent_id}'", param),
                    "code": "resource_missing",
                },
            )
        return intent

    @staticmethod
    def _require_status(intent: JSON, verb: str, allowed: set[str]) -> None:
        if intent["status"] in allowed:
            return
        raise _ApiError(
            400,
            {
                **_invalid(
                    f"This PaymentIntent could not be {verb} because it has a status of "
                    f"{intent['status']}. Only a PaymentIntent with one of the following "
                    f"statuses may be {verb}: {', '.join(sorted(allowed))}.",
                    None,
                ),
                "code": "payment_intent_unexpected_state",
                "payment_intent": dict(intent),
            },
        )


def _invalid(message: str, param: str | None) -> JSON:
    error: JSON = {"type": "invalid_request_error", "message": message}
    if param is not None:
        error["param"] = param
    return error


def _idempotency_error(key: str) -> JSON:
    return {
        "type": "idempotency_error",
        "message": (
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request."
        ),
    }


def _positive_int(form: Mapping[str, str], name: str) -> int:
    raw = form.get(name)
    if raw is None:
        raise _ApiError(
            400, {**_invalid(f"Missing required param: {name}.", name), "code": "parameter_missing"}
        )
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise _ApiError(
            400,
            {
                **_invalid(f"Invalid positive integer: {name}={raw}", name),
                "code": "parameter_invalid_integer",
            },
        )
    return value


def _json(status: int, body: JSON, *, replayed: bool = False) -> web.Response:
    headers = {"Request-Id": "req_" + uuid.uuid4().hex[:14], "Stripe-Version": "standin"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _failed(failure: _Failure) -> tuple[Outcome, int | None]:
    if failure.kind == "drop":
        return "dropped", None
    return "failed", int(failure.kind)


def _fail(request: web.Request, failure: _Failure) -> web.StreamResponse:
    if failure.kind == "500":
        return _json(
            500,
            {"error": {"type": "api_error", "message": "An unknown error occurred (stand-in)."}},
        )
    if failure.kind == "429":
        return _json(
            429,
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Too many requests hit the API too quickly (stand-in).",
                }
            },
        )
    # A connection closed without a response: the client sees the server disconnect.
    with contextlib.suppress(Exception):
        if request.transport is not None:
            request.transport.abort()
    raise web.HTTPServiceUnavailable  # never reaches the closed connection
