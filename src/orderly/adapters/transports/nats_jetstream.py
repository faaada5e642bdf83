"""The NATS JetStream transport: one stream per namespace, durable pull consumers.

Names (``<ns>`` is the namespace, ``<NS>`` the same upper-cased, ``<c>`` a consumer name):

- stream ``<NS>`` holds every message on subject ``<ns>.msg.<type>``, with interest retention:
  a message stays until every consumer subscribed to its type has acknowledged (or
  terminated) it. Like a RabbitMQ exchange without bound queues, a type that no consumer has
  ever subscribed to is not kept, so run ``subscribe`` (start the workers) before the first
  publish; durable consumers outlive their processes, so this only matters once.
- durable pull consumer ``<c>__<type>`` (dots of the type become ``_``) for each type a
  consumer handles, filtered on that type's subject: every consumer gets its own copy (fan-out)
  and the processes of one consumer compete for it. One consumer per type, not one per
  subscription with ``filter_subjects``: servers before 2.10 silently ignore
  ``filter_subjects`` and would hand every type to every consumer.
- stream ``<NS>_DLQ`` (subjects ``<ns>.dlq.<c>``, kept until deleted by an operator): dead
  letters and undecodable messages, with their original headers plus the reason.

``publish`` sends a batch at once and waits for every PubAck. It sets no ``Nats-Msg-Id``:
JetStream's duplicate window would also drop a replay from the dead-letter store (re-sent
under the message's own id) and a producer's deliberate re-send, so a relay's re-publish
after a crash is delivered again and skipped by the consumer's inbox. ``ack_wait`` is
``redelivery_after``: a delivery nobody settles comes back after it. ``retry`` is a NAK with
a delay. The attempt is the server's delivery count (plus the attempts a message was published
with, made by its writer before), so a redelivery after a crash counts as an attempt too;
``max_deliver`` (20) is a safety net above the runtime's own attempt limit.
Messages of one key are not kept in order.

All connection handling is ours: the client never reconnects by itself; the first call after a
lost connection opens a new one (or raises ``TransportUnavailable`` while the server is down).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import nats.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DEFAULT_PREFIX,
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    Header,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from orderly.adapters.transports.codec import UndecodableMessage, decode, encode
from orderly.domain.events import Message
from orderly.services.messaging import (
    Delivery,
    PublishRejected,
    Subscription,
    TransportUnavailable,
)

log = structlog.get_logger("orderly.transport.nats")

H_DEAD_LETTER_REASON = "dead-letter-reason"
H_DEAD_LETTER_CONSUMER = "dead-letter-consumer"
H_DEAD_LETTER_DELIVERIES = "dead-letter-deliveries"

MAX_DELIVER = 20
_DUPLICATE_WINDOW = 120.0
_CONNECT_TIMEOUT = 4.0
_REQUEST_TIMEOUT = 5.0
_MIN_PULL = 0.01
"""A pull request shorter than this is not worth sending (seconds)."""
_PULL_COOLDOWN = 1.0
"""After a pull request the server refused, wait this long before asking that consumer again."""
_MAX_REASON = 2000

_STATUS_HEARTBEAT = "100"
_STATUS_ENDED = frozenset(("404", "408"))
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_TYPE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError, which nats.errors.TimeoutError derives from
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_CONNECTION_ERRORS, APIError)
"""While connecting, any JetStream API error (JetStream disabled, not ready) means unavailable."""


def stream_names(namespace: str) -> tuple[str, str]:
    """The namespace's message stream and dead-letter stream."""
    stream = namespace.upper()
    return stream, f"{stream}_DLQ"


def durable_name(consumer: str, message_type: str) -> str:
    """The durable pull consumer through which ``consumer`` receives ``message_type``."""
    return f"{consumer}__{message_type.replace('.', '_')}"


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise TransportUnavailable(f"NATS: {exc!r}") from exc


def _handle(delivery: Delivery) -> Msg:
    msg = delivery.handle
    if not isinstance(msg, Msg):
        raise TypeError(f"not a NATS delivery: {delivery!r}")
    return msg


def _header_safe(text: str) -> str:
    """Header values end at a line break: fold them, and keep the value reasonably short."""
    return " ".join(text.split())[:_MAX_REASON]


@dataclass(slots=True)
class _Puller:
    """One durable pull consumer and the pull request currently open on it.

    Each request gets its own reply subject, so the end of an older request (its status
    message arriving late) is never mistaken for the end of the current one.
    """

    durable: str
    next_subject: str
    inbox: str
    requests: int = 0
    owed: int = 0
    """Messages the open pull request may still bring."""
    open_until: float = 0.0
    paused_until: float = 0.0

    @property
    def reply(self) -> str:
        return f"{self.inbox}.{self.requests}"

    def idle(self, now: float) -> bool:
        return now >= self.paused_until and (self.owed <= 0 or now >= self.open_until)

    def request(self, batch: int, until: float) -> str:
        self.requests += 1
        self.owed, self.open_until = batch, until
        return self.reply

    def ended(self) -> None:
        self.owed = 0

    def refused(self) -> None:
        self.owed = 0
        self.paused_until = time.monotonic() + _PULL_COOLDOWN


class _Feed:
    """Where the pull consumers of one subscription deliver: one inbox, one arrival buffer."""

    def __init__(self, subscription: Subscription, client: Client, pullers: list[_Puller]) -> None:
        self.subscription = subscription
        self.client = client
        self.pullers = pullers
        self.ready: deque[Msg] = deque()
        self.changed = asyncio.Event()
        self.refused = False
        self._by_inbox = {p.inbox: p for p in pullers}
        self._by_durable = {p.durable: p for p in pullers}

    async def on_message(self, msg: Msg) -> None:
        status = msg.headers.get(Header.STATUS) if msg.headers else None
        if status is None:
            self._arrived(msg)
        elif status != _STATUS_HEARTBEAT:
            self._request_ended(msg, status)
        self.changed.set()

    def _arrived(self, msg: Msg) -> None:
        # Data messages keep their stream subject; the metadata names the consumer.
        with suppress(nats.errors.NotJSMessageError):
            puller = self._by_durable.get(msg.metadata.consumer)
            if puller is not None:
                puller.owed -= 1
        self.ready.append(msg)

    def _request_ended(self, msg: Msg, status: str) -> None:
        puller = self._by_inbox.get(msg.subject.rpartition(".")[0])
        if puller is None or msg.subject != puller.reply:
            return
        if status in _STATUS_ENDED:
            puller.ended()
            return
        description = (msg.headers or {}).get(Header.DESCRIPTION, "")
        log.warning(
            "pull request refused",
            consumer=puller.durable,
            status=status,
            description=description,
        )
        puller.refused()
        self.refused = True

    def resume(self) -> None:
        """The consumers were declared again: pull from them at once."""
        self.refused = False
        for puller in self.pullers:
            puller.paused_until = 0.0

    def take(self, limit: int) -> list[Msg]:
        taken: list[Msg] = []
        while self.ready and len(taken) < limit:
            taken.append(self.ready.popleft())
        return taken

    async def pull(self, batch: int, expires: float) -> None:
        """Open a pull request on every consumer that has none open."""
        now = time.monotonic()
        request = orjson.dumps({"batch": batch, "expires": int(expires * 1e9)})
        for puller in self.pullers:
            if puller.idle(now):
                reply = puller.request(batch, now + expires)
                await self.client.publish(puller.next_subject, request, reply=reply)

    async def wait(self, timeout: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)


class NatsJetStreamTransport:
    """Messages in a JetStream stream, read through durable pull consumers (see module doc)."""

    name = "nats"
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
        max_deliver: int = MAX_DELIVER,
    ) -> None:
        if not _NAME.match(namespace):
            raise ValueError(f"namespace {namespace!r}: use letters, digits, '_' and '-' only")
        self._url = url
        self._namespace = namespace
        self._stream, self._dead_letter_stream = stream_names(namespace)
        self._redelivery_after = redelivery_after
        self._max_deliver = max_deliver
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._feeds: dict[Subscription, _Feed] = {}
        self._connecting = asyncio.Lock()
        self._client_error: Exception | None = None
        self._streams_ready = False
        """False once a stream turned out missing (deleted by hand): made again on next use."""

    async def connect(self) -> None:
        async with self._connecting:
            if self._client is not None and not self._client.is_closed:
                return
            self._feeds.clear()
            self._client_error = None
            client = Client()
            try:
                await asyncio.wait_for(self._open(client), _CONNECT_TIMEOUT)
            except _CONNECT_ERRORS as exc:
                cause = self._client_error or exc
                with suppress(Exception):
                    await client.close()
                raise TransportUnavailable(f"NATS at {self._url}: {cause!r}") from exc
            self._client, self._js = client, client.jetstream(timeout=_REQUEST_TIMEOUT)
            self._streams_ready = True

    async def _open(self, client: Client) -> None:
        await client.connect(
            self._url,
            name=f"orderly-{self._namespace}",
            connect_timeout=int(_CONNECT_TIMEOUT),
            allow_reconnect=False,
            # The client's server-selection loop retries a refused connection on its own; one
            # retry, at once, keeps an unreachable server's answer quick.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            ping_interval=10,
            max_outstanding_pings=3,
            error_cb=self._on_client_error,
            closed_cb=self._on_client_closed,
        )
        await self._ensure_streams(client.jetstream(timeout=_REQUEST_TIMEOUT))

    async def _ensure_streams(self, js: JetStreamContext) -> None:
        await self._ensure_stream(
            js,
            StreamConfig(
                name=self._stream,
                subjects=[f"{self._namespace}.msg.>"],
                retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
            ),
        )
        await self._ensure_stream(
            js,
            StreamConfig(
                name=self._dead_letter_stream,
                subjects=[f"{self._namespace}.dlq.>"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                duplicate_window=_DUPLICATE_WINDOW,
            ),
        )

    @staticmethod
    async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
        # An existing stream is left as it is: an operator may have tuned its limits.
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)

    async def _on_client_error(self, error: Exception) -> None:
        # Connection failures reach the caller as TransportUnavailable; anything else is news.
        self._client_error = error
        level = log.debug if isinstance(error, _CONNECTION_ERRORS) else log.warning
        level("NATS client error", error=repr(error))

    async def _on_client_closed(self) -> None:
        for feed in self._feeds.values():
            feed.changed.set()

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        self._feeds.clear()
        if client is None or client.is_closed:
            return
        with suppress(*_CONNECTION_ERRORS):
            await client.flush(timeout=1)
        with suppress(*_CONNECTION_ERRORS):
            await client.close()

    async def _session(self) -> tuple[Client, JetStreamContext]:
        if self._client is None or self._client.is_closed:
            await self.connect()
        client, js = self._client, self._js
        if client is None or js is None or not client.is_connected:
            raise TransportUnavailable(f"NATS at {self._url}: not connected")
        if not self._streams_ready:
            with _unavailable_on_connection_errors():
                await self._ensure_streams(js)
            self._streams_ready = True
            for feed in self._feeds.values():
                feed.refused = True  # their consumers went with the stream
        return client, js

    async def delete_namespace(self) -> None:
        """Delete the namespace's streams with their consumers and messages (tests, teardown)."""
        _, js = await self._session()
        with _unavailable_on_connection_errors():
            for stream in (self._stream, self._dead_letter_stream):
                with suppress(NotFoundError):
                    await js.delete_stream(stream)

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        if not messages:
            return
        invalid = [m.id for m in messages if not _TYPE.match(m.type)]
        if invalid:
            raise PublishRejected(
                invalid, "type is not a valid NATS subject (letters, digits, _-.)"
            )
        _, js = await self._session()
        with _unavailable_on_connection_errors():
            pending = [
                await self._publish_one(js, message, attempt)
                for message, attempt in zip(messages, attempts or [1] * len(messages), strict=True)
            ]
            try:
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*pending, return_exceptions=True), _REQUEST_TIMEOUT
                )
            finally:
                for future in pending:
                    future.cancel()
        if any(isinstance(outcome, NoStreamResponseError) for outcome in outcomes):
            self._streams_ready = False
        self._check_outcomes(messages, outcomes)

    async def _publish_one(
        self, js: JetStreamContext, message: Message, attempt: int
    ) -> asyncio.Future[PubAck]:
        body, headers = encode(message, attempt)
        subject = f"{self._namespace}.msg.{message.type}"
        return await js.publish_async(subject, body, headers=headers)

    @staticmethod
    def _check_outcomes(messages: Sequence[Message], outcomes: Sequence[object]) -> None:
        failures = [
            (message.id, outcome)
            for message, outcome in zip(messages, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        ]
        if not failures:
            return
        for _, error in failures:
            if isinstance(error, _CONNECTION_ERRORS) or not isinstance(error, APIError):
                raise TransportUnavailable(f"NATS publish: {error!r}")
        raise PublishRejected([message_id for message_id, _ in failures], repr(failures[0][1]))

    async def subscribe(self, subscription: Subscription) -> None:
        await self._feed(subscription)

    async def _feed(self, subscription: Subscription) -> _Feed:
        client, js = await self._session()
        feed = self._feeds.get(subscription)
        if feed is not None and not feed.refused:
            return feed
        durables = self._durables(subscription)
        with _unavailable_on_connection_errors():
            try:
                for message_type, durable in durables.items():
                    config = self._consumer_config(durable, message_type)
                    await js.add_consumer(self._stream, config)
            except NotFoundError as exc:
                self._streams_ready = False
                raise TransportUnavailable(f"NATS stream {self._stream} is missing") from exc
            if feed is None:
                feed = await self._open_feed(client, subscription, list(durables.values()))
        feed.resume()
        return feed

    def _durables(self, subscription: Subscription) -> dict[str, str]:
        if not _NAME.match(subscription.consumer):
            raise ValueError(f"consumer {subscription.consumer!r}: letters, digits, '_', '-' only")
        bad = sorted(t for t in subscription.types if not _TYPE.match(t))
        if bad:
            raise ValueError(f"types {bad}: letters, digits, '_', '-', separated by dots")
        durables = {t: durable_name(subscription.consumer, t) for t in sorted(subscription.types)}
        if len(set(durables.values())) < len(durables):
            raise ValueError(f"types {sorted(durables)} differ only in '.' versus '_'")
        return durables

    def _consumer_config(self, durable: str, message_type: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=durable,
            filter_subject=f"{self._namespace}.msg.{message_type}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._redelivery_after,
            max_deliver=self._max_deliver,
        )

    async def _open_feed(
        self, client: Client, subscription: Subscription, durables: list[str]
    ) -> _Feed:
        inbox = client.new_inbox()
        pullers = [
            _Puller(
                durable=durable,
                next_subject=f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self._stream}.{durable}",
                inbox=f"{inbox}.{index}",
            )
            for index, durable in enumerate(durables)
        ]
        feed = _Feed(subscription, client, pullers)
        await client.subscribe(f"{inbox}.>", cb=feed.on_message)
        self._feeds[subscription] = feed
        return feed

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        feed = await self._feed(subscription)
        while True:
            deliveries = await self._deliveries(feed, max_messages)
            if deliveries:
                return deliveries
            if feed.client.is_closed:
                raise TransportUnavailable(f"NATS at {self._url}: connection lost")
            remaining = deadline - time.monotonic()
            if remaining < _MIN_PULL:
                return []
            feed.changed.clear()
            with _unavailable_on_connection_errors():
                await feed.pull(max(1, max_messages - len(feed.ready)), remaining)
            if not feed.ready:
                await feed.wait(remaining)

    async def _deliveries(self, feed: _Feed, limit: int) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for msg in feed.take(limit):
            try:
                message, published_as = decode(msg.data, _message_headers(msg))
            except UndecodableMessage as exc:
                await self._park_undecodable(msg, feed.subscription.consumer, exc)
                continue
            # Attempts made before it was published (by its writer), then the server's count.
            attempt = published_as - 1 + (msg.metadata.num_delivered or 1)
            deliveries.append(Delivery(message, attempt, feed.subscription, msg))
        return deliveries

    async def _park_undecodable(self, msg: Msg, consumer: str, error: Exception) -> None:
        log.warning(
            "undecodable message moved to the dead-letter stream",
            consumer=consumer,
            subject=msg.subject,
            stream_sequence=msg.metadata.sequence.stream,
            error=str(error),
        )
        await self._park(msg, consumer, f"undecodable: {error}")

    async def ack(self, delivery: Delivery) -> None:
        with _unavailable_on_connection_errors():
            await _handle(delivery).ack()

    async def retry(self, delivery: Delivery, delay: float) -> None:
        with _unavailable_on_connection_errors():
            await _handle(delivery).nak(delay=delay if delay > 0 else None)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._park(_handle(delivery), delivery.subscription.consumer, reason)

    async def _park(self, msg: Msg, consumer: str, reason: str) -> None:
        """Copy the message to the dead-letter stream (confirmed), then end its deliveries."""
        _, js = await self._session()
        metadata = msg.metadata
        headers = _message_headers(msg)
        headers.update(
            {
                H_DEAD_LETTER_REASON: _header_safe(reason),
                H_DEAD_LETTER_CONSUMER: consumer,
                H_DEAD_LETTER_DELIVERIES: str(metadata.num_delivered),
                # Parking one message twice (a crash between the copy and the TERM) keeps one copy.
                "Nats-Msg-Id": f"{consumer}:{metadata.sequence.stream}",
            }
        )
        with _unavailable_on_connection_errors():
            await js.publish(f"{self._namespace}.dlq.{consumer}", msg.data, headers=headers)
            await msg.term()

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        """The copy ``dead_letter`` makes (without a delivery to end): the deliveries header
        says 0, none came through the stream."""
        _, js = await self._session()
        body, headers = encode(message, attempt)
        headers.update(
            {
                H_DEAD_LETTER_REASON: _header_safe(reason),
                H_DEAD_LETTER_CONSUMER: consumer,
                H_DEAD_LETTER_DELIVERIES: "0",
                "Nats-Msg-Id": f"{consumer}:{message.id}:{attempt}",
            }
        )
        with _unavailable_on_connection_errors():
            await js.publish(f"{self._namespace}.dlq.{consumer}", body, headers=headers)


def _message_headers(msg: Msg) -> dict[str, str]:
    """The message's own headers, without the ones NATS adds (``Nats-Msg-Id`` and the like)."""
    return {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
