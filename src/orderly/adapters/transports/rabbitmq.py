"""The RabbitMQ transport: quorum queues, competing consumers, publisher confirms, retry queues.

Topology for namespace ``ns`` and consumer ``c`` (all durable, all quorum queues):

- exchange ``ns`` (topic): a message is published with its type as routing key, ``mandatory``
  and with a publisher confirm; a batch awaits its confirms concurrently.
- ``ns.c``: the consumer's queue, bound to each type it subscribed to, so every consumer gets
  its own copy (fan-out) and the processes of one consumer compete for it. A delivery that is
  not acknowledged returns to the queue as soon as its channel closes (the process died).
  ``x-delivery-limit`` dead-letters a message whose processes keep dying to ``ns.c.dlq``.
- ``ns.c.retry.<ms>ms``: a retried message waits here for ``ms`` (the queue's TTL), then is
  dead-lettered back to ``ns.c``. The delay is rounded up to a coarse series (1, 1.25, 1.5, 2,
  2.5, 3, 4, 5, 6, 8 times a power of ten, from 100 ms), so all messages in one retry queue
  share one TTL and none waits behind a later-expiring one (RabbitMQ expires messages only at
  a queue's head); a retry waits at least its delay and at most a third longer.
- ``ns.c.dlq``: dead letters (``dead_letter``, undecodable messages, the delivery limit).

FastStream's ``RabbitBroker`` owns the connection (robust: it reconnects in the background and
restores channels, queues, bindings and consumers), declares the topology and publishes.
Receiving consumes the aio-pika queue FastStream declared, with a prefetch, into a buffer:
FastStream's subscribers push to handlers and settle messages themselves, and ``get_one``
costs a round trip (and a poll) per message, whereas ``receive`` hands out batches whose
messages are settled later, out of order, by other coroutines.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustConnection,
    AbstractRobustQueue,
    HeadersType,
)
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelInvalidStateError,
    DeliveryError,
    PublishError,
)
from faststream.rabbit import (
    Channel,
    ExchangeType,
    QueueType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
)

from orderly.adapters.transports.codec import UndecodableMessage, decode, encode
from orderly.domain.events import Message
from orderly.services.messaging import (
    Delivery,
    PublishRejected,
    Subscription,
    TransportUnavailable,
)

log = structlog.get_logger("orderly.transport.rabbitmq")

H_DEAD_LETTER_REASON = "dead-letter-reason"
"""Set on a message in a ``.dlq`` queue: why it was dead-lettered."""

_BROKER_HEADERS = (
    "x-death",
    "x-first-death-",
    "x-last-death-",
    "x-delivery-count",
    "x-received-from",
)
_RETRY_STEPS_MS = (100, 125, 150, 200, 250, 300, 400, 500, 600, 800)
_MAX_TTL_MS = 2**32 - 1
_MAX_REASON = 2000
_RECONNECT_INTERVAL = 1.0
_CONNECTION_ERRORS = (AMQPConnectionError, ChannelInvalidStateError, OSError, TimeoutError)


def retry_ttl_ms(delay: float) -> int:
    """The retry queue TTL for ``delay`` seconds: rounded up to the series; 0 for no delay."""
    wanted = math.ceil(delay * 1000)
    if wanted <= 0:
        return 0
    if wanted > _MAX_TTL_MS:
        raise ValueError(f"a retry delay of {delay}s is beyond RabbitMQ's TTL limit")
    decade = 1
    while True:
        for step in _RETRY_STEPS_MS:
            if step * decade >= wanted:
                return min(step * decade, _MAX_TTL_MS)
        decade *= 10


@dataclass
class _Consumer:
    """One subscribed consumer: its queue, bound types, and the buffer its prefetch fills."""

    queue: AbstractRobustQueue
    types: set[str] = field(default_factory=set)
    buffer: asyncio.Queue[AbstractIncomingMessage] = field(default_factory=asyncio.Queue)


class RabbitMqTransport:
    """``Transport`` over RabbitMQ (``amqp://`` or ``amqps://``), through FastStream.

    ``redelivery_after`` is accepted for the common constructor and ignored: RabbitMQ hands an
    unacknowledged delivery out again as soon as the channel that held it closes.
    """

    name = "rabbitmq"
    acks_in_transaction = False
    needs_relay = True
    fans_out = True
    ordered_per_key = False

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "orderly",
        redelivery_after: float = 30.0,
        prefetch: int = 128,
        delivery_limit: int = 20,
        operation_timeout: float = 5.0,
    ) -> None:
        if urlsplit(url).scheme not in ("amqp", "amqps"):
            raise ValueError("a RabbitMQ URL starts with amqp:// or amqps://")
        self._url = url
        self._namespace = namespace
        self._prefetch = prefetch
        self._delivery_limit = delivery_limit
        self._timeout = operation_timeout
        self._exchange = RabbitExchange(namespace, type=ExchangeType.TOPIC, durable=True)
        self._broker: RabbitBroker | None = None
        self._connection: AbstractRobustConnection | None = None
        self._consumers: dict[str, _Consumer] = {}
        self._retry_queues: set[str] = set()
        self._declared: set[str] = set()
        self._subscribing = asyncio.Lock()

    @property
    def declared_queues(self) -> frozenset[str]:
        """Every queue this transport declared (for operators' tools and test clean-up)."""
        return frozenset(self._declared)

    def queue_name(self, consumer: str) -> str:
        return f"{self._namespace}.{consumer}"

    def dead_letter_queue_name(self, consumer: str) -> str:
        return f"{self.queue_name(consumer)}.dlq"

    def retry_queue_name(self, consumer: str, ttl_ms: int) -> str:
        return f"{self.queue_name(consumer)}.retry.{ttl_ms}ms"

    async def connect(self) -> None:
        if self._broker is not None:
            return
        broker = RabbitBroker(
            self._url,
            timeout=self._timeout,
            fail_fast=True,
            reconnect_interval=_RECONNECT_INTERVAL,
            default_channel=Channel(publisher_confirms=True, on_return_raises=True),
        )
        try:
            async with asyncio.timeout(self._timeout):
                connection = await broker.connect()
                await broker.declare_exchange(self._exchange)
        except _CONNECTION_ERRORS as exc:
            await _stop_quietly(broker)
            raise TransportUnavailable(f"RabbitMQ at {self._where()}: {exc!r}") from exc
        self._broker, self._connection = broker, connection

    async def close(self) -> None:
        broker, self._broker, self._connection = self._broker, None, None
        self._consumers.clear()
        self._retry_queues.clear()
        if broker is not None:
            await _stop_quietly(broker)

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        if not messages:
            return
        broker = await self._live_broker()
        outcomes = await asyncio.gather(
            *(
                self._publish_one(broker, message, attempt)
                for message, attempt in zip(messages, attempts or [1] * len(messages), strict=True)
            ),
            return_exceptions=True,
        )
        self._raise_for_failures(messages, outcomes)

    async def subscribe(self, subscription: Subscription) -> None:
        broker = await self._live_broker()
        async with self._subscribing, self._unavailable_on_connection_errors():
            consumer = self._consumers.get(subscription.consumer)
            if consumer is None:
                consumer = await self._start_consumer(broker, subscription.consumer)
            await self._bind(broker, subscription, consumer)

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        if subscription.consumer not in self._consumers:
            await self.subscribe(subscription)
        self._check_alive()
        consumer = self._consumers[subscription.consumer]
        raws = await _take(consumer.buffer, max_messages, timeout)
        if not raws:
            self._check_alive()
        deliveries = []
        for raw in raws:
            delivery = await self._to_delivery(raw, subscription)
            if delivery is not None:
                deliveries.append(delivery)
        return deliveries

    async def ack(self, delivery: Delivery) -> None:
        await _settle(_raw(delivery))

    async def retry(self, delivery: Delivery, delay: float) -> None:
        raw = _raw(delivery)
        _check_open(raw)
        consumer = delivery.subscription.consumer
        body, headers = encode(delivery.message, delivery.attempt + 1)
        target = await self._retry_queue(consumer, retry_ttl_ms(delay))
        await self._send_to_queue(target, body, headers)
        await _settle(raw)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        raw = _raw(delivery)
        _check_open(raw)
        await self.copy_to_dead_letters(
            delivery.message, delivery.attempt, delivery.subscription.consumer, reason
        )
        await _settle(raw)

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        body, headers = encode(message, attempt)
        headers[H_DEAD_LETTER_REASON] = reason[:_MAX_REASON]
        await self._send_to_queue(self.dead_letter_queue_name(consumer), body, headers)

    async def _live_broker(self) -> RabbitBroker:
        if self._broker is None:
            await self.connect()
        self._check_alive()
        assert self._broker is not None
        return self._broker

    def _check_alive(self) -> None:
        if self._connection is None or not self._connection.connected.is_set():
            raise TransportUnavailable(f"RabbitMQ at {self._where()}: connection lost")

    @asynccontextmanager
    async def _unavailable_on_connection_errors(self) -> AsyncIterator[None]:
        """A connection problem, or waiting too long for the broker, is TransportUnavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except _CONNECTION_ERRORS as exc:
            raise TransportUnavailable(f"RabbitMQ at {self._where()}: {exc!r}") from exc

    def _where(self) -> str:
        parts = urlsplit(self._url)
        return f"{parts.hostname}:{parts.port or 5672}"

    async def _start_consumer(self, broker: RabbitBroker, name: str) -> _Consumer:
        await self._declare(
            broker, RabbitQueue(self.dead_letter_queue_name(name), QueueType.QUORUM)
        )
        main = RabbitQueue(
            self.queue_name(name),
            QueueType.QUORUM,
            arguments={
                "x-delivery-limit": self._delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_letter_queue_name(name),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        channel = Channel(prefetch_count=self._prefetch, publisher_confirms=False)
        queue = await broker.config.declarer.declare_queue(main, channel=channel)
        self._declared.add(main.name)
        consumer = _Consumer(queue)
        await queue.consume(consumer.buffer.put, no_ack=False)
        self._consumers[name] = consumer
        return consumer

    async def _bind(
        self, broker: RabbitBroker, subscription: Subscription, consumer: _Consumer
    ) -> None:
        missing = subscription.types - consumer.types
        if not missing:
            return
        exchange = await broker.declare_exchange(self._exchange)
        for type_ in sorted(missing):
            await consumer.queue.bind(exchange, routing_key=type_)
            consumer.types.add(type_)

    async def _retry_queue(self, consumer: str, ttl_ms: int) -> str:
        if ttl_ms == 0:
            return self.queue_name(consumer)
        name = self.retry_queue_name(consumer, ttl_ms)
        if name not in self._retry_queues:
            broker = await self._live_broker()
            queue = RabbitQueue(
                name,
                QueueType.QUORUM,
                arguments={
                    "x-message-ttl": ttl_ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue_name(consumer),
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            async with self._unavailable_on_connection_errors():
                await self._declare(broker, queue)
            self._retry_queues.add(name)
        return name

    async def _declare(self, broker: RabbitBroker, queue: RabbitQueue) -> None:
        await broker.declare_queue(queue)
        self._declared.add(queue.name)

    async def _publish_one(self, broker: RabbitBroker, message: Message, attempt: int) -> None:
        body, headers = encode(message, attempt)
        amqp_headers: HeadersType = dict(headers)
        async with asyncio.timeout(self._timeout):
            await broker.publish(
                body,
                exchange=self._exchange,
                routing_key=message.type,
                mandatory=True,
                persist=True,
                headers=amqp_headers,
                message_id=message.id,
                correlation_id=message.correlation_id,
                content_type="application/json",
                message_type=message.type,
                timeout=self._timeout,
            )

    async def _send_to_queue(self, queue: str, body: bytes, headers: Mapping[str, str]) -> None:
        broker = await self._live_broker()
        amqp_headers: HeadersType = dict(headers)
        try:
            async with self._unavailable_on_connection_errors():
                await broker.publish(
                    body,
                    routing_key=queue,
                    mandatory=True,
                    persist=True,
                    headers=amqp_headers,
                    content_type="application/json",
                    timeout=self._timeout,
                )
        except PublishError as exc:
            raise PublishRejected([], f"queue {queue} is missing: {exc}") from exc
        except DeliveryError as exc:
            raise TransportUnavailable(f"RabbitMQ did not take a message for {queue}") from exc

    def _raise_for_failures(
        self, messages: Sequence[Message], outcomes: Sequence[BaseException | None]
    ) -> None:
        unrouted: list[str] = []
        unavailable: BaseException | None = None
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is None:
                continue
            if isinstance(outcome, PublishError):
                unrouted.append(message.id)
            elif isinstance(outcome, (*_CONNECTION_ERRORS, DeliveryError)):
                unavailable = outcome
            else:
                raise outcome
        if unavailable is not None:
            raise TransportUnavailable(
                f"RabbitMQ at {self._where()} did not confirm every message: {unavailable!r}"
            ) from unavailable
        if unrouted:
            raise PublishRejected(unrouted, "no queue is bound for their type (no subscriber)")

    async def _to_delivery(
        self, raw: AbstractIncomingMessage, subscription: Subscription
    ) -> Delivery | None:
        try:
            message, attempt = decode(raw.body, _orderly_headers(raw.headers))
        except UndecodableMessage as exc:
            await self._park_undecodable(raw, subscription.consumer, exc)
            return None
        return Delivery(message, attempt, subscription, raw)

    async def _park_undecodable(
        self, raw: AbstractIncomingMessage, consumer: str, error: UndecodableMessage
    ) -> None:
        log.warning(
            "undecodable message moved to the dead-letter queue",
            consumer=consumer,
            queue=self.dead_letter_queue_name(consumer),
            amqp_message_id=raw.message_id,
            error=str(error),
        )
        # The consumer queue's own dead-lettering (at least once) carries it to the DLQ, intact.
        try:
            await raw.reject(requeue=False)
        except _CONNECTION_ERRORS:
            log.info("reject not sent: channel closed; the message comes back", consumer=consumer)


async def _take(
    buffer: asyncio.Queue[AbstractIncomingMessage], max_messages: int, timeout: float
) -> list[AbstractIncomingMessage]:
    """Up to ``max_messages`` buffered deliveries still settleable, waiting for the first."""
    if max_messages <= 0:
        return []
    if buffer.empty():
        try:
            async with asyncio.timeout(max(timeout, 0)):
                taken = [await buffer.get()]
        except TimeoutError:
            return []
    else:
        taken = [buffer.get_nowait()]
    while len(taken) < max_messages and not buffer.empty():
        taken.append(buffer.get_nowait())
    # Deliveries of a channel lost meanwhile come back through the restored consumer.
    return [raw for raw in taken if _is_open(raw)]


def _orderly_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The message's own headers: text values, without those RabbitMQ adds."""
    return {
        key: value.decode() if isinstance(value, bytes) else value
        for key, value in headers.items()
        if isinstance(value, str | bytes) and not key.startswith(_BROKER_HEADERS)
    }


def _raw(delivery: Delivery) -> AbstractIncomingMessage:
    if not isinstance(delivery.handle, AbstractIncomingMessage):
        raise TypeError(f"not a RabbitMQ delivery: {delivery!r}")
    return delivery.handle


def _is_open(raw: AbstractIncomingMessage) -> bool:
    try:
        return not raw.channel.is_closed
    except ChannelInvalidStateError:
        return False


def _check_open(raw: AbstractIncomingMessage) -> None:
    if not _is_open(raw):
        raise TransportUnavailable(
            "the delivery's channel is closed; RabbitMQ hands the message out again"
        )


async def _settle(raw: AbstractIncomingMessage) -> None:
    try:
        await raw.ack()
    except _CONNECTION_ERRORS as exc:
        raise TransportUnavailable(
            "the delivery's channel is closed; RabbitMQ hands the message out again"
        ) from exc


async def _stop_quietly(broker: RabbitBroker) -> None:
    try:
        await broker.stop()
    except Exception as exc:  # closing a broken connection may fail in many ways
        log.debug("closing the RabbitMQ connection failed", error=repr(exc))
