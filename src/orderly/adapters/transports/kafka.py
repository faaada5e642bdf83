"""Kafka transport (aiokafka): a topic per message type, a consumer group per consumer.

Names, all prefixed by the namespace ``ns``:

- ``ns.<type>``: every message of one type, keyed by the message key, so one key stays on one
  partition and is read in publish order;
- ``ns.<consumer>.retry``: retried deliveries of one consumer, each with the epoch time it is
  due; the consumer reads it with its main topics and holds a record back until it is due;
- ``ns.<consumer>.dlq``: dead letters of one consumer (never read back by the transport);
- consumer group ``ns.<consumer>``: competing processes of one consumer share the partitions,
  and every consumer gets its own copy of each message (fan-out).

Kafka keeps one committed offset per partition, and a failed record is lost for good once a
later one commits. So a retry is a new record on the retry topic, never a missing ack, and the
commit of a partition only moves past a record once it and everything before it is settled
(acked, retried or dead-lettered), however out of order the runtime's lanes settle them.
Commits are batched in the background and flushed on a rebalance and on ``close``.

Redelivery, at least once: a process that dies leaves its uncommitted records to the member
that takes over its partitions once its session (``redelivery_after``, kept within 1-6 s)
expires; a delivery the live process leaves unsettled for ``redelivery_after`` is handed out
again (its lease ran out); a rebalance hands unsettled records to the partitions' new owner.
The runtime's inbox drops the duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import re
import time
from collections import deque
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)
from aiokafka.protocol.group import LeaveGroupRequest  # type: ignore[import-untyped]

from orderly.adapters.transports.codec import UndecodableMessage, decode, encode
from orderly.domain.events import Message
from orderly.services.messaging import (
    Delivery,
    PublishRejected,
    Subscription,
    TransportUnavailable,
)

log = structlog.get_logger("orderly.transport.kafka")

T = TypeVar("T")

PARTITIONS = 3
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT_MS = 5_000
JOIN_TIMEOUT = 30.0
COMMIT_INTERVAL = 0.05
COMMIT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0
# Tansu answers a group's first JoinGroup after about half the session timeout, and a crashed
# member is only replaced after a whole one: short sessions keep start-up and failover quick.
MAX_SESSION_TIMEOUT = 6.0
MIN_SESSION_TIMEOUT = 1.0
FETCH_MAX_WAIT_MS = 100
MAX_HELD_RETRIES = 10_000

H_DUE_AT = "x-orderly-due-at"
"""Epoch milliseconds before which a retried record is not handed out."""
H_DEAD_LETTER_REASON = "x-orderly-dead-letter-reason"
H_SOURCE = "x-orderly-source"
"""``topic/partition/offset`` of the record a dead letter came from."""
_PRIVATE_HEADERS = frozenset((H_DUE_AT, H_DEAD_LETTER_REASON, H_SOURCE))

_TOPIC_ERRORS_OK = frozenset((0, 36))  # none, TOPIC_ALREADY_EXISTS
_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


class _PartitionLog:
    """The offsets of one partition handed out since it was assigned, and which are settled.

    The commit point is the lowest offset not yet settled (or one past the last handed out).
    """

    __slots__ = ("_done", "_next", "_pending", "committed", "revoked")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None
        self.committed: int | None = None
        self.revoked = False

    def track(self, offset: int) -> None:
        self._pending.append(offset)
        self._next = offset + 1

    def settle(self, offset: int) -> None:
        if not self.is_settled(offset):
            self._done.add(offset)

    def is_settled(self, offset: int) -> bool:
        return not self._pending or offset < self._pending[0] or offset in self._done

    def uncommitted(self) -> int | None:
        """The offset to commit, if it moved since the last commit."""
        while self._pending and self._pending[0] in self._done:
            self._done.discard(self._pending.popleft())
        point = self._pending[0] if self._pending else self._next
        return None if point == self.committed else point


@dataclass(slots=True, eq=False)
class _Receipt:
    """A delivery's handle: the partition log it belongs to and its offset there."""

    log: _PartitionLog
    offset: int

    @property
    def live(self) -> bool:
        return not self.log.revoked and not self.log.is_settled(self.offset)


@dataclass(slots=True, eq=False)
class _Poison:
    """A record that is no orderly message, on its way to the dead-letter topic."""

    record: Any
    receipt: _Receipt
    reason: str


@dataclass(eq=False)
class _Subscriber:
    """One consumer group member: its partitions' logs, held retries and handed-out leases."""

    subscription: Subscription
    consumer: Any
    lease: float
    logs: dict[Any, _PartitionLog] = field(default_factory=dict)
    held: list[tuple[int, int, Delivery]] = field(default_factory=list)
    leases: deque[tuple[float, Delivery]] = field(default_factory=deque)
    poison: list[_Poison] = field(default_factory=list)
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    committer: asyncio.Task[None] | None = None
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def admit(self, record: Any) -> _Receipt:
        tp = TopicPartition(record.topic, record.partition)
        partition_log = self.logs.get(tp)
        if partition_log is None:
            partition_log = self.logs[tp] = _PartitionLog()
        partition_log.track(record.offset)
        return _Receipt(partition_log, record.offset)

    def hold(self, due_ms: int, delivery: Delivery) -> None:
        heapq.heappush(self.held, (due_ms, next(self._sequence), delivery))

    def due(self, limit: int) -> list[Delivery]:
        now_ms = _now_ms()
        out: list[Delivery] = []
        while self.held and self.held[0][0] <= now_ms and len(out) < limit:
            delivery = heapq.heappop(self.held)[2]
            if _receipt(delivery).live:
                out.append(delivery)
        return out

    def seconds_to_next_due(self) -> float:
        return max(0.0, (self.held[0][0] - _now_ms()) / 1000) if self.held else float("inf")

    def expired(self, limit: int) -> list[Delivery]:
        """Deliveries handed out longer than the lease ago and still unsettled: hand out again."""
        now = time.monotonic()
        out: list[Delivery] = []
        while self.leases and len(out) < limit:
            expires, delivery = self.leases[0]
            if _receipt(delivery).live and expires > now:
                break
            self.leases.popleft()
            if _receipt(delivery).live:
                out.append(delivery)
        return out

    def throttle_retries(self, retry_topic: str) -> None:
        """Stop reading the retry topic while too many retries wait in memory."""
        retry_partitions = [tp for tp in self.consumer.assignment() if tp.topic == retry_topic]
        if len(self.held) >= MAX_HELD_RETRIES:
            self.consumer.pause(*retry_partitions)
        else:
            self.consumer.resume(*retry_partitions)

    def hand_out(self, deliveries: Iterable[Delivery]) -> None:
        expires = time.monotonic() + self.lease
        self.leases.extend((expires, d) for d in deliveries)

    def settle(self, receipt: _Receipt) -> None:
        receipt.log.settle(receipt.offset)
        self.dirty.set()

    def revoke(self, partitions: Iterable[Any]) -> None:
        for tp in partitions:
            partition_log = self.logs.pop(tp, None)
            if partition_log is not None:
                partition_log.revoked = True
        self.poison = [p for p in self.poison if not p.receipt.log.revoked]

    async def commit(self) -> None:
        """Commit every partition whose commit point moved; a failure waits for the next try."""
        async with self.commit_lock:
            moved = [
                (tp, lg, o) for tp, lg in self.logs.items() if (o := lg.uncommitted()) is not None
            ]
            if not moved:
                return
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT):
                    await self.consumer.commit({tp: offset for tp, _, offset in moved})
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "kafka: commit failed", consumer=self.subscription.consumer, error=repr(exc)
                )
                return
            for _, partition_log, offset in moved:
                partition_log.committed = offset

    async def commit_continuously(self) -> None:
        while True:
            await self.dirty.wait()
            await asyncio.sleep(COMMIT_INTERVAL)
            self.dirty.clear()
            await self.commit()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what is settled before partitions move to another member, then forgets them."""

    def __init__(self, subscriber: _Subscriber) -> None:
        self._subscriber = subscriber

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self._subscriber.commit()
        self._subscriber.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        return None


class KafkaTransport:
    """The ``Transport`` port on Kafka (see the module docstring for names and guarantees)."""

    name = "kafka"
    acks_in_transaction = False
    needs_relay = True
    fans_out = True
    ordered_per_key = True

    def __init__(
        self, url: str, *, namespace: str = "orderly", redelivery_after: float = 30.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise ValueError(f"not a kafka://host:port URL: {url!r}")
        _check_name(namespace)
        self._servers = parts.netloc
        self._namespace = namespace
        self._redelivery_after = redelivery_after
        self._producer: Any = None
        self._admin: Any = None
        self._topics: set[str] = set()
        self._subscribers: dict[Subscription, _Subscriber] = {}

    @property
    def bootstrap_servers(self) -> str:
        return self._servers

    def topic(self, message_type: str) -> str:
        return f"{self._namespace}.{message_type}"

    def retry_topic(self, consumer: str) -> str:
        return f"{self._namespace}.{consumer}.retry"

    def dead_letter_topic(self, consumer: str) -> str:
        return f"{self._namespace}.{consumer}.dlq"

    def group(self, consumer: str) -> str:
        return f"{self._namespace}.{consumer}"

    async def connect(self) -> None:
        if self._producer is not None:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._servers, request_timeout_ms=REQUEST_TIMEOUT_MS
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self._servers,
            acks="all",
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            linger_ms=1,
        )
        try:
            await _unavailable_on_error(_start(admin, producer), CONNECT_TIMEOUT, "connect")
        except TransportUnavailable:
            await _quietly(producer.stop())
            await _quietly(admin.close())
            raise
        self._admin, self._producer = admin, producer

    async def close(self) -> None:
        subscribers, self._subscribers = list(self._subscribers.values()), {}
        for subscriber in subscribers:
            await self._stop_subscriber(subscriber)
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        self._topics.clear()
        if producer is not None:
            await _quietly(producer.stop())
        if admin is not None:
            await _quietly(admin.close())

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        if not messages:
            return
        await self._ensure_topics({self.topic(m.type) for m in messages})
        records = [
            (self.topic(m.type), m.key, *encode(m, attempt))
            for m, attempt in zip(messages, attempts or [1] * len(messages), strict=True)
        ]
        failures = await self._send(records)
        rejected = [messages[i].id for i, exc in failures]
        if rejected:
            reasons = sorted({repr(exc) for _, exc in failures})
            raise PublishRejected(rejected, "; ".join(reasons))

    async def subscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            return
        for name in (subscription.consumer, *subscription.types):
            _check_name(name)
        consumer = subscription.consumer
        retry = self.retry_topic(consumer)
        topics = {self.topic(t) for t in subscription.types} | {retry}
        await self._ensure_topics(topics | {self.dead_letter_topic(consumer)})
        subscriber = await _unavailable_on_error(
            self._join(subscription, sorted(topics)), JOIN_TIMEOUT, "subscribe"
        )
        subscriber.committer = asyncio.create_task(subscriber.commit_continuously())
        self._subscribers[subscription] = subscriber

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        subscriber = self._subscribers.get(subscription)
        if subscriber is None:
            raise LookupError(f"receive before subscribe: {subscription.consumer!r}")
        deadline = time.monotonic() + timeout
        await self._flush_poison(subscriber, timeout)
        subscriber.throttle_retries(self.retry_topic(subscription.consumer))
        out = subscriber.expired(max_messages)
        out += subscriber.due(max_messages - len(out))
        while len(out) < max_messages:
            wait = (
                0.0 if out else min(deadline - time.monotonic(), subscriber.seconds_to_next_due())
            )
            records = await self._fetch(subscriber, max_messages - len(out), max(wait, 0.0))
            out += self._admit(subscriber, records)
            out += subscriber.due(max_messages - len(out))
            if out or time.monotonic() >= deadline:
                break
        if not out and not await self._broker_answers():
            raise TransportUnavailable("kafka: the broker does not answer")
        subscriber.hand_out(out)
        return out

    async def ack(self, delivery: Delivery) -> None:
        self._settle(delivery)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        if not _receipt(delivery).live:
            return  # settled through a lease re-delivery, or its partition has a new owner
        body, headers = encode(delivery.message, delivery.attempt + 1)
        headers[H_DUE_AT] = str(_now_ms() + round(delay * 1000))
        topic = self.retry_topic(delivery.subscription.consumer)
        await self._send_or_raise([(topic, delivery.message.key, body, headers)])
        self._settle(delivery)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not _receipt(delivery).live:
            return
        await self.copy_to_dead_letters(
            delivery.message, delivery.attempt, delivery.subscription.consumer, reason
        )
        self._settle(delivery)

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        body, headers = encode(message, attempt)
        headers[H_DEAD_LETTER_REASON] = reason
        topic = self.dead_letter_topic(consumer)
        await self._send_or_raise([(topic, message.key, body, headers)])

    async def delete_namespace(self) -> None:
        """Delete every topic and consumer group of this namespace (tests, teardown)."""
        await self.connect()
        prefix = f"{self._namespace}."
        try:
            topics = [t for t in await self._admin.list_topics() if t.startswith(prefix)]
            if topics:
                await self._admin.delete_topics(topics)
            groups = [g[0] for g in await self._admin.list_consumer_groups()]
            ours = [g for g in groups if g.startswith(prefix)]
            if ours:
                await self._admin.delete_consumer_groups(ours)
        except (KafkaError, OSError) as exc:
            raise TransportUnavailable(f"kafka: cleanup failed: {exc!r}") from exc
        self._topics.clear()

    async def _join(self, subscription: Subscription, topics: list[str]) -> _Subscriber:
        session = min(max(self._redelivery_after, MIN_SESSION_TIMEOUT), MAX_SESSION_TIMEOUT)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=self.group(subscription.consumer),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=round(session * 1000),
            heartbeat_interval_ms=round(session * 1000 / 3),
            request_timeout_ms=max(REQUEST_TIMEOUT_MS, round(session * 2000)),
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        subscriber = _Subscriber(subscription, consumer, lease=self._redelivery_after)
        consumer.subscribe(topics, listener=_Rebalance(subscriber))
        try:
            await consumer.start()
        except BaseException:
            await _quietly(consumer.stop())
            raise
        return subscriber

    async def _stop_subscriber(self, subscriber: _Subscriber) -> None:
        """Commit what is settled and leave the group; nothing unsettled is acknowledged."""
        if subscriber.committer is not None:
            subscriber.committer.cancel()
            await asyncio.gather(subscriber.committer, return_exceptions=True)
        await _quietly(subscriber.commit())
        first_generation = _first_generation_member(subscriber.consumer)
        await _quietly(subscriber.consumer.stop())
        if first_generation is not None and self._producer is not None:
            node, member = first_generation
            leave = LeaveGroupRequest(self.group(subscriber.subscription.consumer), member)
            await _quietly(self._producer.client.send(node, leave))

    async def _broker_answers(self) -> bool:
        """Whether a broker accepts a connection: aiokafka's fetcher only logs a lost broker."""
        if self._producer is None:
            return False
        client = self._producer.client
        node = client.get_random_node()
        if node is None:
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await client.ready(node))
        except (TimeoutError, KafkaError, OSError):
            return False

    async def _fetch(self, subscriber: _Subscriber, limit: int, wait: float) -> list[Any]:
        try:
            batches = await subscriber.consumer.getmany(
                timeout_ms=round(wait * 1000), max_records=limit
            )
        except (KafkaError, OSError) as exc:
            raise TransportUnavailable(f"kafka: receive failed: {exc!r}") from exc
        return [record for batch in batches.values() for record in batch]

    def _admit(self, subscriber: _Subscriber, records: Iterable[Any]) -> list[Delivery]:
        out: list[Delivery] = []
        for record in records:
            receipt = subscriber.admit(record)
            try:
                message, attempt, due_ms = _decode(record)
            except UndecodableMessage as exc:
                subscriber.poison.append(_Poison(record, receipt, str(exc)))
                continue
            delivery = Delivery(message, attempt, subscriber.subscription, receipt)
            if due_ms is not None and due_ms > _now_ms():
                subscriber.hold(due_ms, delivery)
            else:
                out.append(delivery)
        return out

    async def _flush_poison(self, subscriber: _Subscriber, budget: float) -> None:
        """Dead-letter records that are no orderly message; on failure try again next time."""
        if not subscriber.poison:
            return
        try:
            async with asyncio.timeout(budget):
                await self._dead_letter_poison(subscriber)
        except (TimeoutError, TransportUnavailable) as exc:
            log.warning("kafka: could not dead-letter an undecodable record", error=repr(exc))

    async def _dead_letter_poison(self, subscriber: _Subscriber) -> None:
        while subscriber.poison:
            poison = subscriber.poison[0]
            record = poison.record
            source = f"{record.topic}/{record.partition}/{record.offset}"
            headers = [
                *(record.headers or ()),
                (H_DEAD_LETTER_REASON, poison.reason.encode()),
                (H_SOURCE, source.encode()),
            ]
            topic = self.dead_letter_topic(subscriber.subscription.consumer)
            await self._ensure_topics({topic})
            await self._send_raw([(topic, record.key, record.value, headers)])
            log.warning(
                "kafka: undecodable record dead-lettered",
                source=source,
                reason=poison.reason,
                dead_letter_topic=topic,
            )
            subscriber.poison.pop(0)
            subscriber.settle(poison.receipt)

    def _settle(self, delivery: Delivery) -> None:
        subscriber = self._subscribers.get(delivery.subscription)
        if subscriber is not None:
            subscriber.settle(_receipt(delivery))

    async def _ensure_topics(self, topics: set[str]) -> None:
        await self.connect()
        missing = topics - self._topics
        if not missing:
            return
        new = [NewTopic(t, PARTITIONS, 1) for t in sorted(missing)]
        response = await _unavailable_on_error(
            self._admin.create_topics(new), CONNECT_TIMEOUT, "create topics"
        )
        failed = [(t, e, m) for t, e, m in response.topic_errors if e not in _TOPIC_ERRORS_OK]
        if failed:
            raise TransportUnavailable(f"kafka: could not create topics: {failed}")
        self._topics |= missing

    async def _send_or_raise(
        self, records: Sequence[tuple[str, str, bytes, dict[str, str]]]
    ) -> None:
        await self._ensure_topics({topic for topic, *_ in records})
        failures = await self._send(records)
        if failures:
            raise TransportUnavailable(f"kafka: send failed: {failures[0][1]!r}")

    async def _send(
        self, records: Sequence[tuple[str, str, bytes, Mapping[str, str]]]
    ) -> list[tuple[int, BaseException]]:
        """Send all, then wait for all; the (index, error) of every record the broker refused."""
        raw = [
            (topic, key.encode(), body, [(k, v.encode()) for k, v in headers.items()])
            for topic, key, body, headers in records
        ]
        return await self._send_raw(raw)

    async def _send_raw(
        self, records: Sequence[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> list[tuple[int, BaseException]]:
        await self.connect()
        results = await _unavailable_on_error(
            self._send_and_wait(records), REQUEST_TIMEOUT_MS / 1000 * 3, "publish"
        )
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if any(_is_connection_problem(exc) for _, exc in failures):
            # A broker that lost its memory (Tansu) needs its topics created again.
            self._topics.clear()
            raise TransportUnavailable(f"kafka: publish failed: {failures[0][1]!r}")
        return failures

    async def _send_and_wait(
        self, records: Sequence[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]]
    ) -> list[object]:
        futures = [
            await self._producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        return list(await asyncio.gather(*futures, return_exceptions=True))


def _decode(record: Any) -> tuple[Message, int, int | None]:
    """The message, its attempt and (for a retried record) when it is due."""
    try:
        headers = {k: v.decode() for k, v in record.headers or ()}
        due = headers.get(H_DUE_AT)
        due_ms = int(due) if due is not None else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UndecodableMessage(f"bad headers: {exc!r}") from exc
    if record.value is None:
        raise UndecodableMessage("no value")
    public = {k: v for k, v in headers.items() if k not in _PRIVATE_HEADERS}
    message, attempt = decode(record.value, public)
    return message, attempt, due_ms


def _receipt(delivery: Delivery) -> _Receipt:
    receipt = delivery.handle
    if not isinstance(receipt, _Receipt):
        raise TypeError(f"not a kafka delivery: {delivery!r}")
    return receipt


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_name(name: str) -> None:
    if not _LEGAL_NAME.match(name):
        raise ValueError(f"not usable in a Kafka topic name (A-Z a-z 0-9 . _ -): {name!r}")


def _is_connection_problem(exc: BaseException) -> bool:
    return isinstance(exc, KafkaConnectionError | KafkaTimeoutError | OSError) or bool(
        getattr(exc, "retriable", False)
    )


async def _start(admin: Any, producer: Any) -> None:
    await admin.start()
    await producer.start()


async def _unavailable_on_error(work: Awaitable[T], timeout: float, what: str) -> T:
    """Await ``work`` within ``timeout``; a connection problem becomes ``TransportUnavailable``."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError as exc:
        raise TransportUnavailable(f"kafka: {what} timed out after {timeout:.0f}s") from exc
    except (KafkaError, OSError) as exc:
        raise TransportUnavailable(f"kafka: {what} failed: {exc!r}") from exc


def _first_generation_member(consumer: Any) -> tuple[int, str] | None:
    """(coordinator node, member id) of a member of a group's generation 0, else None.

    Tansu numbers a group's first generation 0 where Kafka starts at 1, and aiokafka only
    leaves a group from generation 1 on: without our own LeaveGroup the next member of a fresh
    group would wait a whole session timeout for this one to expire.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if getattr(coordinator, "generation", None) != 0:
        return None
    node, member = (
        getattr(coordinator, "coordinator_id", None),
        getattr(coordinator, "member_id", ""),
    )
    return (node, member) if isinstance(node, int) and member else None


async def _quietly(work: Awaitable[object]) -> None:
    """Await a shutdown step; a broker that is gone cannot make closing fail."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await work
