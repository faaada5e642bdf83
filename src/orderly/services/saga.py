"""The saga runner: persists each decision of the pure saga machine and sends its commands.

Every decision is stored in the same transaction as the commands it sends (through the outbox)
and the hooks' side effects (the order's events), so a crash anywhere resumes from the stored
state: a reply processed twice finds the saga already moved and changes nothing. Services
answer commands with reply events through the outbox too; :func:`command_handler` wraps a
service's work so that its reply, and a dead-lettered command's failure reply, reach the saga.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from orderly.domain.events import Message
from orderly.domain.saga import (
    COMPENSATION_FAILED,
    STEP_FAILED,
    Decision,
    Reply,
    SagaDefinition,
    SagaState,
    cancel,
    on_reply,
    on_timeout,
    start,
)
from orderly.services.consumer import Handler, PermanentError, RetryPolicy
from orderly.services.ports import JSON, Clock, IdGenerator, MessageUnitOfWork
from orderly.services.waiting import sleep_or_stop

log = structlog.get_logger("orderly.saga")

SAGA_ORCHESTRATOR = "saga-orchestrator"


class SagaMovedConcurrently(Exception):
    """The saga changed between our read and our write (SQLite has no row locks); retry."""


class SagaHooks(Protocol):
    """What a saga's decisions mean outside the saga (an order's status and events)."""

    async def after(
        self, uow: MessageUnitOfWork, decision: Decision, cause: Message | None
    ) -> None: ...


class NoHooks:
    async def after(
        self, uow: MessageUnitOfWork, decision: Decision, cause: Message | None
    ) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RegisteredSaga:
    definition: SagaDefinition
    hooks: SagaHooks


class SagaRunner:
    """Starts sagas, applies replies, timeouts and cancellations, one transaction each."""

    def __init__(self, sagas: Sequence[RegisteredSaga], *, clock: Clock, ids: IdGenerator) -> None:
        self._sagas = {s.definition.name: s for s in sagas}
        self._by_reply: dict[str, list[RegisteredSaga]] = {}
        for saga in sagas:
            for type_ in saga.definition.reply_types:
                self._by_reply.setdefault(type_, []).append(saga)
        self._clock = clock
        self._ids = ids

    @property
    def reply_types(self) -> frozenset[str]:
        return frozenset(self._by_reply)

    def definition(self, name: str) -> SagaDefinition:
        return self._sagas[name].definition

    async def start(
        self,
        uow: MessageUnitOfWork,
        name: str,
        saga_id: str,
        key: str,
        data: Mapping[str, Any],
        cause: Message | None,
    ) -> bool:
        """Start a saga unless one with this id exists; True if it started."""
        saga = self._sagas[name]
        decision = start(saga.definition, saga_id, key, data, self._clock.now())
        if not await uow.sagas.insert(decision.state):
            return False
        await self._effects(uow, saga, decision, cause)
        return True

    async def reply(self, uow: MessageUnitOfWork, message: Message) -> Decision | None:
        saga_id = message.payload.get("sagaId")
        if not isinstance(saga_id, str):
            raise PermanentError(f"{message.type} without a sagaId")
        state = await uow.sagas.load(saga_id)
        if state is None:
            raise PermanentError(f"{message.type} for unknown saga {saga_id}")
        saga = self._sagas[state.definition]
        data = message.payload.get("data")
        step = message.payload.get("step")
        reply = Reply(
            type=message.type,
            saga_id=saga_id,
            step=step if isinstance(step, str) else None,
            data=data if isinstance(data, dict) else {},
        )
        decision = on_reply(saga.definition, state, reply, self._clock.now())
        if not decision.changed:
            log.info("reply changed nothing", saga_id=saga_id, type=message.type, step=step)
            return None
        await self._save(uow, saga, decision, message)
        return decision

    async def timeout(self, uow: MessageUnitOfWork, saga_id: str) -> Decision | None:
        state = await uow.sagas.load(saga_id)
        if state is None:
            return None
        saga = self._sagas[state.definition]
        decision = on_timeout(saga.definition, state, self._clock.now())
        if not decision.changed:
            return None
        await self._save(uow, saga, decision, None)
        return decision

    async def cancel(self, uow: MessageUnitOfWork, saga_id: str, reason: str) -> Decision | None:
        """Cancel the saga (``NotCancellable`` if it is too late); None if there is no saga."""
        state = await uow.sagas.load(saga_id)
        if state is None:
            return None
        saga = self._sagas[state.definition]
        decision = cancel(saga.definition, state, reason, self._clock.now())
        await self._save(uow, saga, decision, None)
        return decision

    async def load(self, uow: MessageUnitOfWork, saga_id: str) -> SagaState | None:
        return await uow.sagas.load(saga_id)

    async def _save(
        self,
        uow: MessageUnitOfWork,
        saga: RegisteredSaga,
        decision: Decision,
        cause: Message | None,
    ) -> None:
        if not await uow.sagas.save(decision.state):
            raise SagaMovedConcurrently(decision.state.id)
        await self._effects(uow, saga, decision, cause)

    async def _effects(
        self,
        uow: MessageUnitOfWork,
        saga: RegisteredSaga,
        decision: Decision,
        cause: Message | None,
    ) -> None:
        state = decision.state
        now = self._clock.now()
        await uow.sagas.log(state.id, decision.log, now)
        for command in decision.commands:
            await uow.outbox.add(
                Message(
                    id=self._ids.new_id(),
                    type=command.type,
                    key=state.key,
                    payload=dict(command.payload),
                    created_at=now,
                    correlation_id=cause.correlation_id if cause else state.key,
                    causation_id=cause.id if cause else None,
                )
            )
        await saga.hooks.after(uow, decision, cause)

    def reply_handler(self, policy: RetryPolicy | None = None) -> Handler:
        async def handle(uow: MessageUnitOfWork, message: Message) -> None:
            await self.reply(uow, message)

        return Handler(
            consumer=SAGA_ORCHESTRATOR,
            types=self.reply_types,
            handle=handle,
            policy=policy or RetryPolicy(),
        )


class SagaTimeouts:
    """Sweeps sagas whose deadline passed: fails steps, expires holds, resends compensations."""

    def __init__(
        self,
        runner: SagaRunner,
        uow: Callable[[], MessageUnitOfWork],
        *,
        clock: Clock,
        interval: float = 1.0,
        batch: int = 100,
    ) -> None:
        self._runner = runner
        self._uow = uow
        self._clock = clock
        self._interval = interval
        self._batch = batch

    async def sweep(self) -> int:
        """One pass; how many sagas moved."""
        async with self._uow() as uow:
            due = await uow.sagas.due(self._clock.now(), self._batch)
        moved = 0
        for saga_id in due:
            try:
                async with self._uow() as uow:
                    if await self._runner.timeout(uow, saga_id) is not None:
                        moved += 1
                    await uow.commit()
            except SagaMovedConcurrently:
                continue
        return moved

    async def run(self, stop: asyncio.Event) -> None:
        await run_periodically(self.sweep, stop, self._interval, "saga timeouts")


async def run_periodically(
    work: Callable[[], Awaitable[int]], stop: asyncio.Event, interval: float, name: str
) -> None:
    """Run ``work`` every ``interval`` seconds until ``stop``; errors are logged, never fatal."""
    while not stop.is_set():
        try:
            if await work():
                continue
        except Exception as exc:
            log.warning(f"{name} failed, will try again", error=f"{type(exc).__name__}: {exc}")
        await sleep_or_stop(stop, interval)


# ---- the services' side: commands in, replies out --------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A saga command as a service sees it."""

    message: Message
    saga_id: str
    saga_key: str
    step: str
    compensation: bool
    context: Mapping[str, Any]

    def step_data(self, step: str) -> Mapping[str, Any]:
        """The reply data a finished step left in the saga's context."""
        value = self.context.get(step)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class ReplyOut:
    type: str
    data: JSON


def parse_command(message: Message) -> Command:
    payload = message.payload
    saga_id, key, step = payload.get("sagaId"), payload.get("sagaKey"), payload.get("step")
    context = payload.get("context")
    if not (isinstance(saga_id, str) and isinstance(key, str) and isinstance(step, str)):
        raise PermanentError(f"{message.type} is not a saga command")
    return Command(
        message=message,
        saga_id=saga_id,
        saga_key=key,
        step=step,
        compensation=bool(payload.get("compensation")),
        context=context if isinstance(context, dict) else {},
    )


def reply_message(command: Command, reply: ReplyOut, *, ids: IdGenerator, clock: Clock) -> Message:
    message = command.message
    return Message(
        id=ids.new_id(),
        type=reply.type,
        key=message.key,
        payload={"sagaId": command.saga_id, "step": command.step, "data": reply.data},
        created_at=clock.now(),
        correlation_id=message.correlation_id,
        causation_id=message.id,
    )


Work = Callable[[MessageUnitOfWork, Command], Awaitable[ReplyOut | None]]
PreparedWork = Callable[[MessageUnitOfWork, Command, Any], Awaitable[ReplyOut | None]]
Prepare = Callable[[Command], Awaitable[Any]]


def command_handler(
    consumer: str,
    types: frozenset[str],
    *,
    clock: Clock,
    ids: IdGenerator,
    policy: RetryPolicy,
    work: Work | None = None,
    prepare: Prepare | None = None,
    prepared_work: PreparedWork | None = None,
    lanes: int | None = None,
) -> Handler:
    """A service's consumer of saga commands: run the work, send its reply to the saga.

    Work that returns None answers later (a warehouse confirms asynchronously). A command that
    runs out of attempts answers ``saga.step_failed`` or ``saga.compensation_failed``.
    """

    async def send(uow: MessageUnitOfWork, command: Command, reply: ReplyOut | None) -> None:
        if reply is not None:
            await uow.outbox.add(reply_message(command, reply, ids=ids, clock=clock))

    async def handle(uow: MessageUnitOfWork, message: Message) -> None:
        assert work is not None
        command = parse_command(message)
        await send(uow, command, await work(uow, command))

    async def do_prepare(message: Message) -> Any:
        assert prepare is not None
        return await prepare(parse_command(message))

    async def apply(uow: MessageUnitOfWork, message: Message, prepared: Any) -> None:
        assert prepared_work is not None
        command = parse_command(message)
        await send(uow, command, await prepared_work(uow, command, prepared))

    async def on_dead_letter(uow: MessageUnitOfWork, message: Message, reason: str) -> JSON:
        try:
            command = parse_command(message)
        except PermanentError:
            return {}
        type_ = COMPENSATION_FAILED if command.compensation else STEP_FAILED
        data: JSON = {"reason": "PROCESSING_ERROR", "error": reason, "command": message.type}
        await send(uow, command, ReplyOut(type_, data))
        return {"sagaId": command.saga_id, "step": command.step, "replied": type_}

    if prepare is not None:
        return Handler(
            consumer=consumer,
            types=types,
            handle=handle,
            policy=policy,
            on_dead_letter=on_dead_letter,
            prepare=do_prepare,
            apply=apply,
            lanes=lanes,
        )
    return Handler(
        consumer=consumer,
        types=types,
        handle=handle,
        policy=policy,
        on_dead_letter=on_dead_letter,
        lanes=lanes,
    )
