"""Messaging port: what a transport must do, and the vocabulary the consumer runtime speaks.

A transport only moves messages (a JSON payload plus headers) between processes and
acknowledges them. Retries, backoff, dead-lettering, inbox deduplication and metrics belong to
the consumer runtime (``services.consumer``) and are identical on every transport.

Routing: a message is published by *type*. A subscription names a *consumer* (a durable
name such as ``process-order``) and the types it handles. Every consumer subscribed to a type
gets its own copy of each message of that type (where the transport fans out); competing
processes of one consumer share the work. Retries and dead letters belong to one consumer:
retrying a message for ``process-order`` never redelivers it to another consumer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orderly.domain.events import Message

# Header names carried by every message on every transport.
H_MESSAGE_ID = "message-id"
H_TYPE = "type"
H_KEY = "key"
H_CORRELATION_ID = "correlation-id"
H_CAUSATION_ID = "causation-id"
H_CREATED_AT = "created-at"
H_ATTEMPT = "attempt"
H_TRACEPARENT = "traceparent"
H_REPLAY_OF = "replay-of"
"""Set on a message re-sent from the dead-letter store: the replay record's id."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A durable consumer and the message types it handles."""

    consumer: str
    types: frozenset[str]

    @classmethod
    def of(cls, consumer: str, types: Collection[str]) -> Subscription:
        return cls(consumer, frozenset(types))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a message to one consumer.

    ``attempt`` counts from 1 and grows with every ``retry``; ``handle`` is the transport's own
    receipt (a row id, a stream entry id, a broker message) and means nothing to anyone else.
    """

    message: Message
    attempt: int
    subscription: Subscription
    handle: object = field(compare=False, repr=False)
    written_here: bool = field(default=False, compare=False)
    """Delivered by the worker whose transaction wrote it (``OwnDeliveries``), not by the
    transport; ``handle`` is then the message's outbox row id."""


class TransportUnavailable(Exception):
    """The broker (or database) cannot be reached right now; try again later."""


class PublishRejected(Exception):
    """The broker refused some messages for good (not a connection problem)."""

    def __init__(self, message_ids: Sequence[str], reason: str) -> None:
        super().__init__(f"{len(message_ids)} message(s) rejected: {reason}")
        self.message_ids = tuple(message_ids)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WriteLease:
    """A claim written with the message: ``owner`` holds it for ``seconds`` after the commit,
    like a claim by ``receive``; if the owner dies first, the message is handed out again
    when the lease runs out."""

    owner: str
    seconds: float


class Transport(Protocol):
    """Moves messages between processes, at least once.

    Contract (checked against every implementation by ``tests/contract/test_transports.py``):
    - ``publish`` returns only once the broker has durably accepted every message;
    - ``receive`` hands out each published message of a subscribed type to one process of each
      subscribed consumer; a delivery not acknowledged (the process died) is handed out again
      after the transport's lease / visibility timeout;
    - ``retry`` hands the message to the same consumer again after at least ``delay`` seconds,
      with ``attempt + 1``, without holding back other messages meanwhile;
    - ``dead_letter`` removes the message from circulation for that consumer (and parks it in the
      broker's own dead-letter queue where there is one);
    - ``copy_to_dead_letters`` parks a copy of a message that reached the consumer without the
      transport (delivered by its writer) in that same dead-letter queue;
    - ``ack`` removes it from circulation for that consumer.
    """

    name: str
    acks_in_transaction: bool
    """True when the ack is a row update that the runtime makes inside the handler's own
    transaction (``UnitOfWork.outbox.mark_delivered``); ``ack`` then does nothing."""
    needs_relay: bool
    """True when outbox rows must be moved to the broker by the relay; False when the outbox
    table itself is the queue."""
    fans_out: bool
    """True when several consumers may subscribe to one type, each getting every message."""
    ordered_per_key: bool
    """True when messages with one key reach a consumer in publish order (one at a time)."""

    async def connect(self) -> None:
        """Open connections; raise ``TransportUnavailable`` if the broker cannot be reached."""
        ...

    async def close(self) -> None: ...

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        """Hand messages to the broker and wait for its confirmation of each.

        ``attempts`` (one per message, default 1 each) is the attempt each is delivered as:
        a message whose earlier attempts were made elsewhere (delivered by its writer) keeps
        its count."""
        ...

    async def subscribe(self, subscription: Subscription) -> None:
        """Declare what the subscription needs (queues, groups, durable consumers); idempotent."""
        ...

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout`` seconds for the first."""
        ...

    async def ack(self, delivery: Delivery) -> None: ...

    async def retry(self, delivery: Delivery, delay: float) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        """Put ``message``, dead-lettered by ``consumer`` at ``attempt`` after it reached it
        without this transport (delivered by its writer), in the consumer's dead-letter queue,
        as ``dead_letter`` does with a delivery, so the broker's queue holds every dead letter.
        A transport without a dead-letter queue of its own (the local one: the dead-letter
        store is its queue) does nothing."""
        ...


class OwnDeliveries(Protocol):
    """How a worker settles the messages it delivers to itself (``Delivery.written_here``).

    A message that a worker's handler transaction adds for one of that worker's own consumers
    is written to the outbox already claimed by the worker (``write_lease``), and after the
    commit goes straight to the consumer's lanes: no claim, no broker. It is acknowledged in
    the handler's transaction by marking its row sent (``UnitOfWork.acks``); ``retry`` puts the
    row back, due after the delay, with its attempt counted, for whatever hands rows out (the
    local transport's claim, or the relay, which publishes it to the broker); ``dead_letter``
    marks it sent and copies it to the transport's dead-letter queue. A worker that dies first
    leaves the row to the lease's expiry.
    """

    write_lease: WriteLease

    async def retry(self, delivery: Delivery, delay: float) -> None: ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None: ...
