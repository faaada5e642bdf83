"""Value types of the idempotency component, shared by the rules and the store port."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class IdempotencyScope:
    """A key is unique per user, HTTP method and route template."""

    user_id: str
    method: str
    route: str
    key: str


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response exactly as first sent, replayed byte for byte."""

    status_code: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class KeyRecord:
    fingerprint: str
    response: StoredResponse | None
    expires_at: datetime
    resource_id: str | None = None
    resource_status: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key was free: this request owns it until its transaction ends."""


@dataclass(frozen=True, slots=True)
class Existing:
    """The key was already used; ``record`` says with what."""

    record: KeyRecord


@dataclass(frozen=True, slots=True)
class InFlight:
    """Another transaction holds the key right now."""


ClaimResult = Claimed | Existing | InFlight
