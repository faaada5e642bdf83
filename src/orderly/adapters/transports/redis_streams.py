"""The Redis Streams transport: one stream per message type, one consumer group per consumer.

Keys (``<ns>`` is the namespace, ``<c>`` a consumer name):

- ``<ns>:type:<type>``: a stream holding every message of one type. Each consumer subscribed
  to the type owns a group named after it on the stream, so every consumer gets its own copy
  (fan-out) and the processes of one consumer compete for the entries.
- ``<ns>:consumer:<c>:delayed``: a sorted set of retries waiting for their due time (server
  clock, milliseconds).
- ``<ns>:consumer:<c>:retry``: the stream due retries are moved to; only ``<c>``'s group reads it.
- ``<ns>:consumer:<c>:dlq``: dead letters and undecodable entries, never read by anyone.

An entry carries two fields: ``headers`` (a JSON object of strings) and ``body`` (the payload).
An entry left unacknowledged for ``redelivery_after`` seconds (its process died) is claimed by
the next ``receive`` of that consumer (XAUTOCLAIM) with its attempt unchanged. Only history that
every group has acknowledged is trimmed. Messages of one key are not kept in order: competing
processes, concurrent lanes and retries all reorder them.

Needs Redis >= 6.2 (XAUTOCLAIM), standalone or behind Sentinel; the scripts touch several keys,
so Redis Cluster is not supported. ``publish`` is as durable as the server's persistence
settings (``appendonly yes`` with ``appendfsync everysec`` or ``always``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT, XReadGroupResponse

from orderly.adapters.transports.codec import UndecodableMessage, decode, encode
from orderly.domain.events import Message
from orderly.services.messaging import (
    Delivery,
    PublishRejected,
    Subscription,
    TransportUnavailable,
)

log = structlog.get_logger("orderly.transport.redis")

_CONNECT_TIMEOUT = 2.0
_SOCKET_TIMEOUT = 10.0
_MAX_BLOCK = 5.0
"""Longest XREADGROUP block; well under the socket timeout so a blocked read never times out."""
_MOVE_POLL = 1.0
"""How often due retries scheduled by other processes are looked for."""
_MOVE_LIMIT = 200
_POOL_SIZE = 64
_STALE_CONSUMER_MS = 10 * 60 * 1000
_TRANSIENT_ERRORS = ("MISCONF", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "NOREPLICAS")

Fields = dict[bytes, bytes]

# Schedules a retry: the original is acknowledged and the re-encoded message waits in the
# delayed set, both or neither; a delivery somebody else already settled is left alone.
_RETRY = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
return 1
"""

# Moves due retries to the consumer's retry stream. A member is "<headers JSON>\n<body>".
# Returns {moved, milliseconds until the next retry is due or -1}.
_MOVE_DUE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local cut = string.find(member, '\\n', 1, true)
  if cut then
    redis.call('XADD', KEYS[2], '*', 'headers', string.sub(member, 1, cut - 1),
               'body', string.sub(member, cut + 1))
  else
    redis.call('XADD', KEYS[2], '*', 'broken', member)
  end
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next == 0 then return {#due, -1} end
return {#due, math.max(tonumber(next[2]) - now, 0)}
"""

# Parks an entry in the dead-letter stream and acknowledges it, both or neither.
# ARGV: group, entry id, reason, then the entry's fields.
_DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local fields = {'reason', ARGV[3], 'stream', KEYS[1], 'entry-id', ARGV[2]}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"""

# Trims what every group has acknowledged (below the oldest pending or undelivered entry of
# any group) and forgets consumers that hold nothing and have been idle for ARGV[1] ms.
_HOUSEKEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function before(a, b)
  local ad, bd = string.find(a, '-', 1, true), string.find(b, '-', 1, true)
  local ams, bms = tonumber(string.sub(a, 1, ad - 1)), tonumber(string.sub(b, 1, bd - 1))
  if ams ~= bms then return ams < bms end
  return tonumber(string.sub(a, ad + 1)) < tonumber(string.sub(b, bd + 1))
end
local function as_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local floor = nil
for _, raw in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local group = as_table(raw)
  local bound = group['last-delivered-id']
  if group['pending'] > 0 then bound = redis.call('XPENDING', KEYS[1], group['name'])[2] end
  if floor == nil or before(bound, floor) then floor = bound end
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group['name'])) do
    local consumer = as_table(c)
    if consumer['pending'] == 0 and consumer['idle'] > tonumber(ARGV[1]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group['name'], consumer['name'])
    end
  end
end
if floor == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
"""

# Removes this process's consumer from a group on close, unless it still holds deliveries
# (a deleted consumer's pending entries could never be claimed again).
_FORGET_CONSUMER = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(pending) ~= 'table' or pending.err or #pending > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class _Handle:
    """Where a delivery came from: the stream and the entry id."""

    stream: str
    entry_id: str


@dataclass(frozen=True, slots=True)
class _Keys:
    namespace: str

    def type_stream(self, type_: str) -> str:
        return f"{self.namespace}:type:{type_}"

    def consumer_key(self, consumer: str, kind: str) -> str:
        return f"{self.namespace}:consumer:{consumer}:{kind}"


@dataclass
class _Reader:
    """What ``receive`` remembers about one subscription."""

    subscription: Subscription
    streams: tuple[str, ...]
    retry_stream: str
    delayed: str
    dlq: str
    buffer: deque[Delivery] = field(default_factory=deque)
    cursors: dict[str, str] = field(default_factory=dict)
    next_move: float = 0.0
    next_reclaim: float = 0.0

    @property
    def group(self) -> str:
        return self.subscription.consumer

    def take(self, limit: int) -> list[Delivery]:
        return [self.buffer.popleft() for _ in range(min(limit, len(self.buffer)))]

    def expect_retry_within(self, delay: float) -> None:
        self.next_move = min(self.next_move, time.monotonic() + delay)


@dataclass(frozen=True, slots=True)
class _Scripts:
    retry: AsyncScript
    move_due: AsyncScript
    dead_letter: AsyncScript
    housekeep: AsyncScript
    forget_consumer: AsyncScript

    @classmethod
    def on(cls, client: Redis) -> _Scripts:
        return cls(
            retry=client.register_script(_RETRY),
            move_due=client.register_script(_MOVE_DUE),
            dead_letter=client.register_script(_DEAD_LETTER),
            housekeep=client.register_script(_HOUSEKEEP),
            forget_consumer=client.register_script(_FORGET_CONSUMER),
        )


class RedisStreamsTransport:
    """Streams and consumer groups on one Redis server; see the module docstring."""

    name = "redis"
    acks_in_transaction = False
    needs_relay = True
    fans_out = True
    ordered_per_key = False

    def __init__(
        self, url: str, *, namespace: str = "orderly", redelivery_after: float = 30.0
    ) -> None:
        self._url = url
        self._keys = _Keys(namespace)
        self._redelivery_after = redelivery_after
        self._consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client: Redis | None = None
        self._scripts: _Scripts | None = None
        self._readers: dict[Subscription, _Reader] = {}
        self._acks = _AckBatcher()

    async def connect(self) -> None:
        if self._client is not None:
            return
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=_POOL_SIZE,
            timeout=_CONNECT_TIMEOUT,
            protocol=2,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            client_name=f"orderly:{self._keys.namespace}:{self._consumer}".replace(" ", "_"),
        )
        client = Redis.from_pool(pool)
        try:
            with _unavailable_on_failure():
                async with asyncio.timeout(2 * _CONNECT_TIMEOUT):
                    await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._scripts = _Scripts.on(client)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        await self._acks.stop()
        for reader in self._readers.values():
            reader.buffer.clear()
        with suppress(RedisError, OSError):
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await self._forget_consumer(client)
        with suppress(RedisError, OSError):
            await client.aclose()

    async def publish(
        self, messages: Sequence[Message], attempts: Sequence[int] | None = None
    ) -> None:
        if not messages:
            return
        client = await self._connected()
        pipe = client.pipeline(transaction=False)
        for message, attempt in zip(messages, attempts or [1] * len(messages), strict=True):
            body, headers = encode(message, attempt)
            fields: dict[FieldT, EncodableT] = {b"headers": orjson.dumps(headers), b"body": body}
            pipe.xadd(self._keys.type_stream(message.type), fields)
        with _unavailable_on_failure():
            replies = await pipe.execute(raise_on_error=False)
        _check_published(messages, replies)

    async def subscribe(self, subscription: Subscription) -> None:
        client = await self._connected()
        reader = self._readers.get(subscription) or self._new_reader(subscription)
        pipe = client.pipeline(transaction=False)
        for stream in reader.streams:
            pipe.xgroup_create(stream, reader.group, id="0", mkstream=True)
        with _unavailable_on_failure():
            replies = await pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception) and not str(reply).startswith("BUSYGROUP"):
                    raise reply
        self._readers[subscription] = reader

    async def receive(
        self, subscription: Subscription, max_messages: int, timeout: float
    ) -> list[Delivery]:
        reader = self._readers.get(subscription)
        if reader is None:
            await self.subscribe(subscription)
            reader = self._readers[subscription]
        if not reader.buffer:
            await self._fill(reader, max_messages, timeout)
        return reader.take(max_messages)

    async def ack(self, delivery: Delivery) -> None:
        handle = _handle_of(delivery)
        client = await self._connected()
        await self._acks.ack(client, handle.stream, delivery.subscription.consumer, handle.entry_id)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        handle = _handle_of(delivery)
        consumer = delivery.subscription.consumer
        body, headers = encode(delivery.message, delivery.attempt + 1)
        member = orjson.dumps(headers) + b"\n" + body
        scripts = await self._loaded_scripts()
        keys = [handle.stream, self._keys.consumer_key(consumer, "delayed")]
        args: list[str | bytes | int] = [
            consumer,
            handle.entry_id,
            max(int(delay * 1000), 0),
            member,
        ]
        with _unavailable_on_failure():
            await scripts.retry(keys=keys, args=args)
        reader = self._readers.get(delivery.subscription)
        if reader is not None:
            reader.expect_retry_within(delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        body, headers = encode(delivery.message, delivery.attempt)
        await self._park(
            delivery.subscription.consumer,
            _handle_of(delivery),
            reason,
            {b"headers": orjson.dumps(headers), b"body": body},
        )

    async def copy_to_dead_letters(
        self, message: Message, attempt: int, consumer: str, reason: str
    ) -> None:
        """The entry ``dead_letter`` writes, without a stream entry to acknowledge: its
        ``stream`` field says where the message came from instead."""
        client = await self._connected()
        body, headers = encode(message, attempt)
        fields: dict[FieldT, EncodableT] = {
            b"reason": reason.encode(),
            b"stream": b"outbox",
            b"headers": orjson.dumps(headers),
            b"body": body,
        }
        with _unavailable_on_failure():
            await client.xadd(self._keys.consumer_key(consumer, "dlq"), fields)

    async def _connected(self) -> Redis:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

    async def _loaded_scripts(self) -> _Scripts:
        await self._connected()
        assert self._scripts is not None
        return self._scripts

    def _new_reader(self, subscription: Subscription) -> _Reader:
        consumer = subscription.consumer
        retry_stream = self._keys.consumer_key(consumer, "retry")
        types = sorted(subscription.types)
        return _Reader(
            subscription=subscription,
            streams=(*(self._keys.type_stream(t) for t in types), retry_stream),
            retry_stream=retry_stream,
            delayed=self._keys.consumer_key(consumer, "delayed"),
            dlq=self._keys.consumer_key(consumer, "dlq"),
        )

    async def _fill(self, reader: _Reader, max_messages: int, timeout: float) -> None:
        client = await self._connected()
        with _unavailable_on_failure():
            try:
                entries = await self._fetch(client, reader, max_messages, timeout)
            except ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                # The server lost its groups (a restart without persistence): declare again.
                await self.subscribe(reader.subscription)
                return
            for stream, entry_id, fields in entries:
                delivery = await self._delivery(reader, stream, entry_id, fields)
                if delivery is not None:
                    reader.buffer.append(delivery)

    async def _fetch(
        self, client: Redis, reader: _Reader, max_messages: int, timeout: float
    ) -> list[tuple[str, str, Fields | None]]:
        if time.monotonic() >= reader.next_move:
            await self._move_due(reader)
        entries: list[tuple[str, str, Fields | None]] = []
        if time.monotonic() >= reader.next_reclaim:
            entries = await self._reclaim(client, reader, max_messages)
        if len(entries) >= max_messages:
            return entries
        block = 0.0 if entries else min(timeout, reader.next_move - time.monotonic(), _MAX_BLOCK)
        reply = await client.xreadgroup(
            reader.group,
            self._consumer,
            dict.fromkeys(reader.streams, ">"),
            count=max_messages - len(entries),
            block=max(int(block * 1000), 1) if block > 0 else None,
        )
        return entries + _read_reply(reply)

    async def _move_due(self, reader: _Reader) -> None:
        scripts = await self._loaded_scripts()
        moved, wait_ms = await scripts.move_due(
            keys=[reader.delayed, reader.retry_stream], args=[_MOVE_LIMIT]
        )
        wait = _MOVE_POLL if wait_ms < 0 else min(wait_ms / 1000, _MOVE_POLL)
        reader.next_move = time.monotonic() + (0.0 if moved >= _MOVE_LIMIT else wait)

    async def _reclaim(
        self, client: Redis, reader: _Reader, max_messages: int
    ) -> list[tuple[str, str, Fields | None]]:
        """Entries other (dead) processes of this consumer left unacknowledged for too long."""
        reader.next_reclaim = time.monotonic() + self._redelivery_after / 2
        scripts = await self._loaded_scripts()
        entries: list[tuple[str, str, Fields | None]] = []
        for stream in reader.streams:
            await self._housekeep(scripts, stream)
            if len(entries) >= max_messages:
                continue
            cursor, claimed, *_ = await client.xautoclaim(
                stream,
                reader.group,
                self._consumer,
                min_idle_time=int(self._redelivery_after * 1000),
                start_id=reader.cursors.get(stream, "0-0"),
                count=max_messages - len(entries),
            )
            reader.cursors[stream] = cursor.decode()
            entries += _entries(stream.encode(), claimed)
        return entries

    @staticmethod
    async def _housekeep(scripts: _Scripts, stream: str) -> None:
        try:
            await scripts.housekeep(keys=[stream], args=[_STALE_CONSUMER_MS])
        except ResponseError as exc:
            if _is_transient(exc):
                raise
            # Trimming is an optimisation: a server that refuses it must not stop deliveries.
            log.warning("stream housekeeping failed", stream=stream, error=str(exc))

    async def _delivery(
        self, reader: _Reader, stream: str, entry_id: str, fields: Fields | None
    ) -> Delivery | None:
        handle = _Handle(stream, entry_id)
        try:
            message, attempt = _decode_entry(fields)
        except UndecodableMessage as exc:
            log.warning(
                "undecodable message dead-lettered",
                consumer=reader.group,
                stream=stream,
                entry_id=entry_id,
                error=str(exc),
            )
            await self._park(reader.group, handle, f"undecodable: {exc}", fields or {})
            return None
        return Delivery(message, attempt, reader.subscription, handle)

    async def _park(self, consumer: str, handle: _Handle, reason: str, fields: Fields) -> None:
        scripts = await self._loaded_scripts()
        args: list[str | bytes] = [consumer, handle.entry_id, reason]
        for name, value in fields.items():
            args += [name, value]
        with _unavailable_on_failure():
            await scripts.dead_letter(
                keys=[handle.stream, self._keys.consumer_key(consumer, "dlq")], args=args
            )

    async def _forget_consumer(self, client: Redis) -> None:
        assert self._scripts is not None
        for reader in self._readers.values():
            for stream in reader.streams:
                await self._scripts.forget_consumer(
                    keys=[stream], args=[reader.group, self._consumer], client=client
                )


class _AckBatcher:
    """Sends the acks of concurrent lanes together: one pipeline per round trip, not per ack."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], list[tuple[str, asyncio.Future[None]]]] = {}
        self._sender: asyncio.Task[None] | None = None

    async def ack(self, client: Redis, stream: str, group: str, entry_id: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((stream, group), []).append((entry_id, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send(client))
        await future

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done():
            sender.cancel()
            with suppress(asyncio.CancelledError):
                await sender
        _settle(self._waiting, TransportUnavailable("the Redis transport was closed"))
        self._waiting = {}

    async def _send(self, client: Redis) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            pipe = client.pipeline(transaction=False)
            for (stream, group), items in batch.items():
                pipe.xack(stream, group, *(entry_id for entry_id, _ in items))
            try:
                replies = await _execute(pipe)
            except TransportUnavailable as exc:
                _settle(batch, exc)
                continue
            except asyncio.CancelledError:
                _settle(batch, TransportUnavailable("the Redis transport was closed"))
                raise
            for (key, items), reply in zip(batch.items(), replies, strict=True):
                failed = isinstance(reply, Exception) and not str(reply).startswith("NOGROUP")
                _settle({key: items}, reply if failed else None)


async def _execute(pipe: Pipeline) -> list[Any]:
    with _unavailable_on_failure():
        return await pipe.execute(raise_on_error=False)


def _settle(
    batch: dict[tuple[str, str], list[tuple[str, asyncio.Future[None]]]],
    error: BaseException | None,
) -> None:
    for items in batch.values():
        for _, future in items:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    """Connection trouble (and a server refusing writes for now) as ``TransportUnavailable``."""
    try:
        yield
    except (RedisError, OSError) as exc:
        if _is_transient(exc):
            raise TransportUnavailable(f"Redis is unavailable: {exc}") from exc
        raise


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(_TRANSIENT_ERRORS)


def _read_reply(reply: XReadGroupResponse) -> list[tuple[str, str, Fields | None]]:
    if not isinstance(reply, list):
        raise TypeError(f"expected a RESP2 XREADGROUP reply, got {type(reply).__name__}")
    return [entry for stream, items in reply for entry in _entries(stream, items)]


def _entries(stream: bytes, items: list[Any]) -> list[tuple[str, str, Fields | None]]:
    name = stream.decode()
    return [(name, entry_id.decode(), fields) for entry_id, fields in items]


def _decode_entry(fields: Fields | None) -> tuple[Message, int]:
    if not fields or b"headers" not in fields or b"body" not in fields:
        raise UndecodableMessage("the entry has no headers or body field")
    try:
        headers = orjson.loads(fields[b"headers"])
    except orjson.JSONDecodeError as exc:
        raise UndecodableMessage(f"headers are not JSON: {exc}") from exc
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise UndecodableMessage("headers are not a JSON object of strings")
    return decode(fields[b"body"], headers)


def _check_published(messages: Sequence[Message], replies: list[Any]) -> None:
    failures = [
        (message.id, reply)
        for message, reply in zip(messages, replies, strict=True)
        if isinstance(reply, Exception)
    ]
    if not failures:
        return
    first = failures[0][1]
    if any(_is_transient(reply) for _, reply in failures):
        raise TransportUnavailable(f"Redis refused some messages for now: {first}") from first
    raise PublishRejected([message_id for message_id, _ in failures], str(first))


def _handle_of(delivery: Delivery) -> _Handle:
    if not isinstance(delivery.handle, _Handle):
        raise TypeError(f"not a Redis Streams delivery: {delivery!r}")
    return delivery.handle
