"""Ports of the read side: the read models the projections consumer keeps current, their
rebuild from the logs, and an order's audit trail.

Read models (DESIGN §1.6) are projections of two logs: the order streams (``order_events``)
and the stock ledger. They are kept current asynchronously from ``order.changed`` and
``stock.changed`` messages, and can be wiped and refolded from the logs at any time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Progress = Callable[[str, int, int], None]
"""Told ``(phase, done, total)`` as a rebuild advances."""


@dataclass(frozen=True, slots=True)
class OrderAfter:
    """An order's status and failure reason right after the last event of an ``order.changed``
    message: its row at that version, which the message carries (``status``,
    ``failureReason``)."""

    status: str
    failure_reason: str | None


class ReadModels(Protocol):
    """The read models as the projections consumer writes them, inside its unit of work."""

    async def apply_order_events(
        self,
        order_id: str,
        customer_id: str,
        placed_at: datetime,
        events: Sequence[Mapping[str, Any]],
        *,
        after: OrderAfter | None = None,
    ) -> None:
        """Fold events of one order (``{version, type, data, occurredAt}``) into the order
        history and fulfilment models; ``after``, the order's state after the last of them,
        lets the history row be written without reading it.

        Idempotent and safe out of order: events at or below the stored version change
        nothing, and a model only ever moves to a higher version.
        """
        ...

    async def apply_stock_entries(self, entries: Sequence[Mapping[str, Any]], at: datetime) -> None:
        """Add ledger deltas (``{sku, warehouseId, kind, onHandDelta, reservedDelta, orderId}``)
        to the inventory levels. Not idempotent: the consumer's inbox applies each message once.
        """
        ...


class ProjectionStore(Protocol):
    """The read models as a whole, outside any unit of work: rebuild and queries."""

    async def rebuild(self, progress: Progress | None = None) -> dict[str, int]:
        """Wipe the three read models and refold them from the logs in one transaction.

        Returns the number of rows of each model (``order_history``, ``inventory_levels``,
        ``fulfilment``).
        """
        ...

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of the three read models, sorted by key, JSON-ready (for comparing)."""
        ...

    async def customer_history(
        self, customer_id: str, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """A customer's orders, newest first."""
        ...

    async def inventory_levels(self, sku: str | None) -> list[dict[str, Any]]:
        """Levels per (sku, warehouse), with ``available`` = on hand - reserved."""
        ...

    async def fulfilment(self, order_id: str) -> dict[str, Any] | None:
        """The order's fulfilment status and shipments; None before fulfilment started."""
        ...


class TrailView(Protocol):
    """Everything that happened to one order, from every table that records it."""

    async def trail(self, order_id: str) -> dict[str, Any] | None:
        """``{"order": {...}, "entries": [{at, source, what, detail}, ...]}`` in time order;
        ``source`` is one of event, saga, attempt, dead-letter, payment, shipment. None if
        there is no such order.
        """
        ...
