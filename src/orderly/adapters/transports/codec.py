"""One wire format for every broker: JSON payload bytes plus string headers."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import orjson

from orderly.domain.events import Message
from orderly.services.messaging import (
    H_ATTEMPT,
    H_CAUSATION_ID,
    H_CORRELATION_ID,
    H_CREATED_AT,
    H_KEY,
    H_MESSAGE_ID,
    H_TYPE,
)

_RESERVED = frozenset(
    (H_MESSAGE_ID, H_TYPE, H_KEY, H_CORRELATION_ID, H_CAUSATION_ID, H_CREATED_AT, H_ATTEMPT)
)


class UndecodableMessage(ValueError):
    """Bytes or headers that are not an orderly message."""


def encode(message: Message, attempt: int = 1) -> tuple[bytes, dict[str, str]]:
    """The payload as JSON bytes, and every other field as a header."""
    headers = {k: v for k, v in message.headers.items() if k not in _RESERVED}
    headers.update(
        {
            H_MESSAGE_ID: message.id,
            H_TYPE: message.type,
            H_KEY: message.key,
            H_CORRELATION_ID: message.correlation_id,
            H_CREATED_AT: message.created_at.isoformat(),
            H_ATTEMPT: str(attempt),
        }
    )
    if message.causation_id is not None:
        headers[H_CAUSATION_ID] = message.causation_id
    return orjson.dumps(message.payload), headers


def decode(body: bytes, headers: Mapping[str, str]) -> tuple[Message, int]:
    """The message and its attempt number; ``UndecodableMessage`` if either part is broken."""
    try:
        payload = orjson.loads(body)
        if not isinstance(payload, dict):
            raise UndecodableMessage("payload is not a JSON object")
        message = Message(
            id=headers[H_MESSAGE_ID],
            type=headers[H_TYPE],
            key=headers[H_KEY],
            payload=payload,
            created_at=datetime.fromisoformat(headers[H_CREATED_AT]),
            correlation_id=headers[H_CORRELATION_ID],
            causation_id=headers.get(H_CAUSATION_ID),
            headers={k: v for k, v in headers.items() if k not in _RESERVED},
        )
        attempt = int(headers.get(H_ATTEMPT, "1"))
    except (KeyError, ValueError, orjson.JSONDecodeError) as exc:
        if isinstance(exc, UndecodableMessage):
            raise
        raise UndecodableMessage(f"not an orderly message: {exc!r}") from exc
    return message, max(attempt, 1)
