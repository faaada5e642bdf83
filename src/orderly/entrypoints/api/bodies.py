"""JSON request bodies parsed once: raw bytes, one ``orjson.loads``, then the model.

A FastAPI body parameter parses the body with the standard library's ``json`` and validates
it through a dependency; the idempotency fingerprint then needed the parsed body again. A
route that reads its body here parses it once and hands the same value to the model and to
the fingerprint, answering as a body parameter would: ``400`` malformed JSON, ``422`` with
the errors under ``body``. The body is JSON only with a JSON ``Content-Type``
(``application/json`` or ``application/*+json``), as FastAPI decides; any other body fails
validation. JSON is RFC 8259 in UTF-8: ``NaN``, a byte order mark, UTF-16, lone surrogates
and nesting deeper than orjson's 1024 levels are malformed (``400``).
"""

from __future__ import annotations

import email.message
from typing import Any, Final, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from orderly.entrypoints.api.problems import ProblemError, malformed_json
from orderly.services import idempotency

Model = TypeVar("Model", bound=BaseModel)


class _Missing:
    """An empty body, which a required body parameter reports as missing."""


MISSING: Final = _Missing()


def declares_json(content_type: str | None) -> bool:
    """FastAPI's rule for parsing a body as JSON; no Content-Type at all is not JSON."""
    if not content_type:
        return False
    if content_type == "application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed, or ``400`` malformed-json."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise malformed_json() from exc


async def read_body(request: Request) -> Any:
    """The body as a body parameter receives it: ``MISSING`` when empty, the parsed JSON
    under a JSON Content-Type (``400`` if malformed), else the raw bytes."""
    raw = await request.body()
    if not raw:
        return MISSING
    if declares_json(request.headers.get("content-type")):
        return parse_json(raw)
    return raw


def validate(model: type[Model], body: Any) -> Model:
    """``body`` (from ``read_body``) as ``model``, or ``422`` with the errors under ``body``."""
    if body is MISSING:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    try:
        # from_attributes as FastAPI validates a body parameter (it names the error of a
        # non-object body the same way).
        return model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def fingerprint(body: Any) -> str:
    """The idempotency fingerprint of a parsed body; ``400`` for one nested too deeply to be
    hashed (orjson writes 254 levels; a validated order body has four)."""
    try:
        return idempotency.fingerprint(body)
    except orjson.JSONEncodeError as exc:
        raise ProblemError(400, "malformed-json", "the request body is nested too deeply") from exc
