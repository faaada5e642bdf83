"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.constants import REF_TEMPLATE
from fastapi.openapi.models import Schema as OpenApiSchema
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from orderly import __version__
from orderly.bootstrap import Container
from orderly.domain.orders import InvalidOrder, UnknownProducts
from orderly.entrypoints.api.limits import BodySizeLimit
from orderly.entrypoints.api.problems import (
    Problem,
    ProblemError,
    on_http_exception,
    on_problem,
    on_validation_error,
    problem_response,
)
from orderly.entrypoints.api.routes import admin_orders, auth, catalogue, dlq, health, orders, ui
from orderly.entrypoints.api.schemas import PlaceOrderIn
from orderly.services import idempotency
from orderly.services.ports import StorageUnavailable

log = structlog.get_logger("orderly.api")

DESCRIPTION = """
Event-driven order processing. `POST /api/orders` answers `202 Accepted` at once and never
books a retried request twice.

**Idempotency.** Every state-changing `POST` needs an `Idempotency-Key` header (1-255 printable
ASCII characters; a fresh UUID v4 per order is ideal; the quoted form `"..."` is accepted).
Keys are scoped to the calling user, method and route and expire after
**{ttl_hours:g} hours**. A retry with the same key and body replays the first response byte for
byte with `Idempotent-Replayed: true`; the same key with another body is `422`; a retry while
the first request is still in flight is `409` with `Retry-After`. A request that fails
validation stores nothing, so it may be retried with the same key.

**Errors** are `application/problem+json` (RFC 9457). Malformed JSON is `400`; a body over the
size limit is `413`. Money is always integer minor units of the order's currency.
"""


def _purge_loop(container: Container) -> Any:
    async def loop() -> None:
        interval = container.settings.idempotency_purge_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                purged = await idempotency.purge_expired(container.uow, container.clock)
                if purged:
                    log.info("idempotency_keys_purged", count=purged)
            except StorageUnavailable as exc:
                log.warning("idempotency_purge_failed", error=str(exc))

    return loop()


def create_app(container: Container, *, check_schema: bool = True) -> FastAPI:
    """Build the API around ``container``; the lifespan checks the schema and runs the purge."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if check_schema:
            await container.check_schema()
        purge = asyncio.create_task(_purge_loop(container))
        try:
            yield
        finally:
            purge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purge

    ttl_hours = container.settings.idempotency_ttl_seconds / 3600
    app = FastAPI(
        title="orderly",
        version=__version__,
        description=DESCRIPTION.format(ttl_hours=ttl_hours),
        lifespan=lifespan,
    )
    app.state.container = container
    app.add_middleware(BodySizeLimit, max_bytes=container.settings.max_body_bytes)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    _add_domain_handlers(app)

    for module in (orders, admin_orders, catalogue, auth, health, ui, dlq):
        app.include_router(module.router)
    _document_problems(app)
    return app


def _add_domain_handlers(app: FastAPI) -> None:
    async def unknown_products(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, UnknownProducts)
        return problem_response(
            422, "unknown-sku", str(exc), instance=request.url.path, unknownSkus=exc.skus
        )

    async def invalid_order(request: Request, exc: Exception) -> Response:
        return problem_response(422, "invalid-order", str(exc), instance=request.url.path)

    async def key_error(request: Request, exc: Exception) -> Response:
        path = request.url.path
        if isinstance(exc, idempotency.KeyReused):
            return problem_response(422, "idempotency-key-reused", str(exc), instance=path)
        if isinstance(exc, idempotency.RequestInFlight):
            return problem_response(
                409,
                "idempotency-key-in-flight",
                str(exc),
                instance=path,
                headers={"Retry-After": str(exc.retry_after)},
            )
        slug = (
            "idempotency-key-missing"
            if isinstance(exc, idempotency.KeyMissing)
            else "idempotency-key-malformed"
        )
        return problem_response(400, slug, str(exc), instance=path)

    async def storage_unavailable(request: Request, exc: Exception) -> Response:
        log.warning("storage_unavailable", path=request.url.path, error=str(exc))
        return problem_response(
            503,
            "storage-unavailable",
            "the database is unavailable; retry later",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after answering, so the traceback still reaches the log.
        return problem_response(
            500,
            "internal-error",
            "an unexpected error occurred",
            instance=request.url.path,
        )

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(UnknownProducts, unknown_products)
    app.add_exception_handler(InvalidOrder, invalid_order)
    app.add_exception_handler(idempotency.IdempotencyError, key_error)
    app.add_exception_handler(StorageUnavailable, storage_unavailable)


# Models of bodies that routes parse themselves (bodies.py): FastAPI does not see them.
BODIES_READ_BY_ROUTES: tuple[type[BaseModel], ...] = (PlaceOrderIn,)


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    """``model``'s schema, and those of the models it uses, as FastAPI writes them (through
    its OpenAPI model: no null defaults, numbers as the model types them)."""
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
    found = {**schema.pop("$defs", {}), model.__name__: schema}
    for name, definition in found.items():
        schemas[name] = jsonable_encoder(
            OpenApiSchema.model_validate(definition), by_alias=True, exclude_none=True
        )


def _document_problems(app: FastAPI) -> None:
    """Add the Problem schema; replace FastAPI's default 422 with ours."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema()
        for model in BODIES_READ_BY_ROUTES:
            _add_schema(schemas, model)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path in schema["paths"].values():
            for operation in path.values():
                response = operation.get("responses", {}).get("422")
                if response and "application/json" in response.get("content", {}):
                    response["content"] = {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }
                    response["description"] = "The request is invalid"
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
