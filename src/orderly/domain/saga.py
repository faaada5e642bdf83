"""A generic orchestrated saga: a declarative definition and the pure state machine that runs it.

A definition is an ordered list of steps. Each step sends one command and waits for a reply
event: a success advances to the next step, a failure compensates the finished steps in
reverse, a *hold* (a review) parks the step until a later reply or its hold timeout. A step that
does not answer within its timeout fails the saga; a step with ``resends`` has its command sent
again, evenly within that timeout, while no reply has come (a broker that lost a confirmed
message), and still fails at the timeout. Compensations run one at a time, each
waiting for its own reply; one that does not answer is sent again, and one that keeps failing
parks the saga in NEEDS_ATTENTION.

Everything here is pure: the functions take the stored state, the clock's ``now`` and what
happened, and return a :class:`Decision` (the new state, the commands to send, the milestones
reached, log lines). The runner in the service layer persists the state and sends the commands
through the outbox, in one transaction, so a crash at any point resumes from the stored state.

A step's command may still be in flight when the saga is cancelled or interrupted. The saga then
*abandons* it: it waits for that step's reply (a late success is compensated like any finished
step) or, past the step's timeout, compensates it blind. Services therefore make compensations
idempotent and tolerant of "nothing to undo".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

COMPENSATION_FAILED = "saga.compensation_failed"
"""Reply type a service sends when a compensation command ran out of attempts."""
STEP_FAILED = "saga.step_failed"
"""Reply type a service sends when a step's command ran out of attempts."""


class SagaStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"

    @property
    def terminal(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.NEEDS_ATTENTION)


class StepStatus(StrEnum):
    REQUESTED = "REQUESTED"
    """The step's command is sent; its reply is awaited."""
    HELD = "HELD"
    """The step answered "hold" (a review); a later reply or the hold timeout decides."""
    ABANDONING = "ABANDONING"
    """The saga is failing while this step's command is in flight: wait for its reply."""
    COMPENSATING = "COMPENSATING"
    """This finished step's compensation is sent; its reply is awaited."""
    IDLE = "IDLE"
    """Nothing in flight (terminal sagas)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """How often a step's command handler is tried before it is dead-lettered."""

    attempts: int = 3
    base_delay_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its command, the replies that decide it, and what undoes it.

    ``command`` None is a local step: it succeeds as soon as it is reached. ``milestone`` names
    what the saga has reached once the step succeeded (an order status, say); ``start_milestone``
    what it reaches when the step starts; ``hold_milestone`` while the step is held.
    """

    name: str
    command: str | None
    succeeded: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    compensation: str | None = None
    compensated: frozenset[str] = frozenset()
    timeout: timedelta = timedelta(minutes=5)
    hold_timeout: timedelta = timedelta(minutes=10)
    timeout_reason: str = "PROCESSING_ERROR"
    hold_timeout_reason: str = "PROCESSING_ERROR"
    retry: Retry = Retry()
    milestone: str | None = None
    start_milestone: str | None = None
    hold_milestone: str | None = None
    cancellable: bool = False
    """Whether the saga may be cancelled while this step is the current one."""
    partial: bool = False
    """The step may fail after doing part of its work (one of two shipments left): its own
    compensation runs when it fails, not only the earlier steps'."""
    resends: int = 0
    """Times the command is sent again while no reply has come, evenly within ``timeout``
    (with 2, at a third and two thirds of it); the step still fails at ``timeout``. Only for a
    command whose handler, run again under a new message id, answers again and does nothing
    twice."""

    @property
    def resend_interval(self) -> timedelta:
        """Time from the request (or a resend) to the next resend or the timeout."""
        return self.timeout / (self.resends + 1)


@dataclass(frozen=True, slots=True)
class Interrupt:
    """An unsolicited event that fails a running saga until ``until_step`` has succeeded."""

    type: str
    reason: str
    until_step: str


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]
    interrupts: tuple[Interrupt, ...] = ()
    compensation_resends: int = 2
    """Times an unanswered compensation is sent again before the saga needs attention."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"saga {self.name}: steps need unique names")
        seen: set[str] = set()
        for step in self.steps:
            kinds = (step.succeeded, step.failed, step.held, step.compensated)
            if sum(len(k) for k in kinds) != len(frozenset().union(*kinds)):
                raise ValueError(f"saga {self.name}: step {step.name} uses a reply type twice")
            replies = step.succeeded | step.failed | step.held | step.compensated
            if step.command is not None and not step.succeeded:
                raise ValueError(f"saga {self.name}: step {step.name} has no success reply")
            if step.resends < 0:
                raise ValueError(f"saga {self.name}: step {step.name} has negative resends")
            if step.compensation is not None and not step.compensated:
                raise ValueError(f"saga {self.name}: step {step.name} compensation has no reply")
            if replies & seen:
                raise ValueError(f"saga {self.name}: reply types {replies & seen} used twice")
            seen |= replies
        for interrupt in self.interrupts:
            if interrupt.until_step not in names:
                raise ValueError(f"saga {self.name}: interrupt {interrupt.type} names no step")
            if interrupt.type in seen:
                raise ValueError(f"saga {self.name}: interrupt {interrupt.type} is a step reply")

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"saga {self.name} has no step {name!r}")

    def index(self, name: str) -> int:
        return self.steps.index(self.step(name))

    @property
    def reply_types(self) -> frozenset[str]:
        types: set[str] = {COMPENSATION_FAILED, STEP_FAILED}
        for step in self.steps:
            types |= step.succeeded | step.failed | step.held | step.compensated
        types |= {i.type for i in self.interrupts}
        return frozenset(types)

    @property
    def command_types(self) -> frozenset[str]:
        types: set[str] = set()
        for step in self.steps:
            types |= {t for t in (step.command, step.compensation) if t is not None}
        return frozenset(types)


@dataclass(frozen=True, slots=True)
class SagaState:
    """A saga instance as stored. ``data`` holds the start data and each step's reply data."""

    id: str
    definition: str
    key: str
    status: SagaStatus
    step: int
    step_status: StepStatus
    done: tuple[str, ...]
    data: Mapping[str, Any]
    deadline: datetime | None
    reason: str | None
    detail: Mapping[str, Any]
    version: int
    resends: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SagaCommand:
    """A command to send: to run ``step`` or, if ``compensation``, to undo it."""

    type: str
    step: str
    compensation: bool
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Milestone:
    name: str
    step: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of a saga's history: what happened to which step."""

    kind: str
    step: str | None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    state: SagaState
    commands: tuple[SagaCommand, ...] = ()
    milestones: tuple[Milestone, ...] = ()
    log: tuple[LogEntry, ...] = ()
    changed: bool = True


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply event as the saga sees it."""

    type: str
    saga_id: str
    step: str | None
    data: Mapping[str, Any]


_NOT_DONE = "not-done"
_UNCERTAIN = "uncertain"
_ABANDON = "abandon"


class NotCancellable(Exception):
    """The saga is past the point where it may be cancelled, or already over."""


def start(
    definition: SagaDefinition, saga_id: str, key: str, data: Mapping[str, Any], now: datetime
) -> Decision:
    state = SagaState(
        id=saga_id,
        definition=definition.name,
        key=key,
        status=SagaStatus.RUNNING,
        step=0,
        step_status=StepStatus.IDLE,
        done=(),
        data=dict(data),
        deadline=None,
        reason=None,
        detail={},
        version=0,
        resends=0,
        created_at=now,
        updated_at=now,
    )
    out = _Builder(definition, state, now)
    out.log("saga.started", None)
    out.begin_step(0)
    return out.decision()


def on_reply(definition: SagaDefinition, state: SagaState, reply: Reply, now: datetime) -> Decision:
    """Apply a reply; a duplicate, late or foreign reply changes nothing."""
    out = _Builder(definition, state, now)
    if state.status.terminal:
        return out.unchanged()
    for interrupt in definition.interrupts:
        if reply.type == interrupt.type:
            return _interrupt(out, interrupt, reply)
    if reply.step is None:
        return out.unchanged()
    try:
        index = definition.index(reply.step)
    except KeyError:
        return out.unchanged()
    step = definition.steps[index]
    if reply.type == COMPENSATION_FAILED:
        if (
            state.status is SagaStatus.COMPENSATING
            and state.step_status is StepStatus.COMPENSATING
            and index == state.step
        ):
            out.log("compensation.failed", step.name, reply.data)
            out.needs_attention(f"compensation of {step.name} failed", reply.data)
            return out.decision()
        return out.unchanged()
    if index != state.step:
        return out.unchanged()
    if state.status is SagaStatus.RUNNING:
        return _running_reply(out, step, reply)
    if state.status is SagaStatus.COMPENSATING:
        return _compensating_reply(out, step, reply)
    return out.unchanged()


def on_timeout(definition: SagaDefinition, state: SagaState, now: datetime) -> Decision:
    """Act on a passed deadline: fail the step, give up a hold, or resend a compensation."""
    out = _Builder(definition, state, now)
    if state.status.terminal or state.deadline is None or state.deadline > now:
        return out.unchanged()
    step = definition.steps[state.step]
    if state.status is SagaStatus.RUNNING:
        if state.step_status is StepStatus.HELD:
            out.log("step.hold_expired", step.name)
            # A held step may have done something undoable before it held: undo it blind.
            how = _UNCERTAIN if step.compensation is not None else _NOT_DONE
            out.fail(step.hold_timeout_reason, {"step": step.name, "error": "hold expired"}, how)
        elif (
            state.step_status is StepStatus.REQUESTED
            and state.resends < step.resends
            # The step's own timeout: a clock that jumped past it fails the step at once.
            and now < state.deadline + step.resend_interval * (step.resends - state.resends)
        ):
            out.log("step.resent", step.name, {"resend": state.resends + 1})
            out.set(resends=state.resends + 1, deadline=state.deadline + step.resend_interval)
            out.send_step(step)
            return out.decision()
        else:
            out.log("step.timed_out", step.name)
            out.fail(
                step.timeout_reason,
                {"step": step.name, "error": f"no reply within {step.timeout}"},
                _UNCERTAIN,
            )
        return out.decision()
    if state.step_status is StepStatus.ABANDONING:
        # The abandoned command never answered: it may have run, so undo it blind.
        out.log("step.timed_out", step.name, {"abandoned": True})
        out.set(done=(*state.done, step.name))
        out.compensate_from(len(state.done))
        return out.decision()
    if state.resends >= definition.compensation_resends:
        out.log("compensation.timed_out", step.name)
        out.needs_attention(f"compensation of {step.name} never answered", {})
        return out.decision()
    out.log("compensation.resent", step.name, {"resend": state.resends + 1})
    out.set(resends=state.resends + 1)
    out.send_compensation(step)
    return out.decision()


def cancel(definition: SagaDefinition, state: SagaState, reason: str, now: datetime) -> Decision:
    """Cancel a running saga whose current step allows it; raises :class:`NotCancellable`."""
    if state.status is not SagaStatus.RUNNING:
        raise NotCancellable(f"saga is {state.status.value}")
    step = definition.steps[state.step]
    if not step.cancellable:
        raise NotCancellable(f"saga is at step {step.name}, which cannot be cancelled")
    out = _Builder(definition, state, now)
    out.log("saga.cancel_requested", step.name)
    out.fail(reason, {"step": step.name, "error": "cancelled"}, _ABANDON)
    return out.decision()


def _running_reply(out: _Builder, step: Step, reply: Reply) -> Decision:
    state = out.state
    if reply.type in step.succeeded:
        out.log("step.succeeded", step.name, reply.data)
        out.set(data={**state.data, step.name: dict(reply.data)}, done=(*state.done, step.name))
        if step.milestone:
            out.milestone(step.milestone, step.name, reply.data)
        out.begin_step(state.step + 1)
        return out.decision()
    if reply.type in step.failed or reply.type == STEP_FAILED:
        out.log("step.failed", step.name, reply.data)
        reason = str(reply.data.get("reason") or step.timeout_reason)
        how = _UNCERTAIN if step.partial and step.compensation is not None else _NOT_DONE
        out.fail(reason, {"step": step.name, **reply.data}, how)
        return out.decision()
    if reply.type in step.held and state.step_status is StepStatus.REQUESTED:
        out.log("step.held", step.name, reply.data)
        out.set(
            step_status=StepStatus.HELD,
            deadline=out.now + step.hold_timeout,
            data={**state.data, step.name: dict(reply.data)},
        )
        if step.hold_milestone:
            out.milestone(step.hold_milestone, step.name, reply.data)
        return out.decision()
    return out.unchanged()


def _compensating_reply(out: _Builder, step: Step, reply: Reply) -> Decision:
    state = out.state
    if state.step_status is StepStatus.ABANDONING:
        if reply.type in step.succeeded:
            out.log("step.succeeded_late", step.name, reply.data)
            out.set(data={**state.data, step.name: dict(reply.data)}, done=(*state.done, step.name))
            out.compensate_from(len(state.done))
            return out.decision()
        if reply.type in step.held and step.compensation is not None:
            # Not a final answer: keep waiting for one, or for the abandon deadline.
            return out.unchanged()
        if reply.type in step.failed or reply.type == STEP_FAILED or reply.type in step.held:
            out.log("step.abandoned", step.name, reply.data)
            out.compensate_from(len(state.done) - 1)
            return out.decision()
        return out.unchanged()
    if state.step_status is StepStatus.COMPENSATING and reply.type in step.compensated:
        out.log("compensation.succeeded", step.name, reply.data)
        out.compensate_from(state.done.index(step.name) - 1)
        return out.decision()
    return out.unchanged()


def _interrupt(out: _Builder, interrupt: Interrupt, reply: Reply) -> Decision:
    state = out.state
    if state.status is not SagaStatus.RUNNING or interrupt.until_step in state.done:
        return out.unchanged()
    out.log("saga.interrupted", None, {"type": interrupt.type, **reply.data})
    out.fail(interrupt.reason, {"interrupt": interrupt.type, **reply.data}, _ABANDON)
    return out.decision()


class _Builder:
    """Accumulates one decision."""

    def __init__(self, definition: SagaDefinition, state: SagaState, now: datetime) -> None:
        self.definition = definition
        self.state = state
        self.now = now
        self._commands: list[SagaCommand] = []
        self._milestones: list[Milestone] = []
        self._log: list[LogEntry] = []

    def set(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)

    def log(self, kind: str, step: str | None, detail: Mapping[str, Any] | None = None) -> None:
        self._log.append(LogEntry(kind, step, dict(detail or {})))

    def milestone(self, name: str, step: str, data: Mapping[str, Any] | None = None) -> None:
        self._milestones.append(Milestone(name, step, dict(data or {})))
        self._log.append(LogEntry("milestone", step, {"milestone": name}))

    def payload(self, step: Step, *, compensation: bool) -> dict[str, Any]:
        return {
            "sagaId": self.state.id,
            "sagaKey": self.state.key,
            "step": step.name,
            "compensation": compensation,
            "context": dict(self.state.data),
        }

    def begin_step(self, index: int) -> None:
        """Start step ``index`` (running local steps at once), or complete the saga."""
        steps = self.definition.steps
        while index < len(steps):
            step = steps[index]
            self.set(step=index, resends=0)
            if step.start_milestone:
                self.milestone(step.start_milestone, step.name)
            if step.command is not None:
                self.log("step.requested", step.name)
                self.set(step_status=StepStatus.REQUESTED, deadline=self.now + step.resend_interval)
                self.send_step(step)
                return
            self.log("step.succeeded", step.name)
            self.set(done=(*self.state.done, step.name))
            if step.milestone:
                self.milestone(step.milestone, step.name)
            index += 1
        self.log("saga.completed", None)
        self.set(status=SagaStatus.COMPLETED, step_status=StepStatus.IDLE, deadline=None)

    def fail(self, reason: str, detail: Mapping[str, Any], how: str = _NOT_DONE) -> None:
        """Stop going forward and start compensating the finished steps.

        ``how`` says what became of the current step: it did not happen (``_NOT_DONE``), it may
        have happened (``_UNCERTAIN``: compensate it too), or its command may still be in
        flight (``_ABANDON``: hear its answer first).
        """
        state = self.state
        self.set(status=SagaStatus.COMPENSATING, reason=reason, detail=dict(detail), resends=0)
        current = self.definition.steps[state.step]
        if how == _UNCERTAIN:
            self.set(done=(*state.done, current.name))
            self.compensate_from(len(state.done))
        elif how == _ABANDON and (
            state.step_status is StepStatus.REQUESTED
            or (state.step_status is StepStatus.HELD and current.compensation is not None)
        ):
            wait = current.hold_timeout if state.step_status is StepStatus.HELD else current.timeout
            self.set(step_status=StepStatus.ABANDONING, deadline=self.now + wait)
            self.log("step.abandoning", current.name)
        else:
            self.compensate_from(len(state.done) - 1)

    def compensate_from(self, position: int) -> None:
        """Compensate the finished steps from ``done[position]`` down to the first."""
        done = self.state.done
        while position >= 0:
            step = self.definition.step(done[position])
            if step.compensation is not None:
                self.set(step=self.definition.index(step.name), resends=0)
                self.send_compensation(step)
                return
            position -= 1
        self.log("saga.compensated", None, {"reason": self.state.reason})
        self.set(status=SagaStatus.COMPENSATED, step_status=StepStatus.IDLE, deadline=None)

    def send_step(self, step: Step) -> None:
        assert step.command is not None
        self._commands.append(
            SagaCommand(step.command, step.name, False, self.payload(step, compensation=False))
        )

    def send_compensation(self, step: Step) -> None:
        assert step.compensation is not None
        self.log("compensation.requested", step.name)
        self.set(step_status=StepStatus.COMPENSATING, deadline=self.now + step.timeout)
        self._commands.append(
            SagaCommand(step.compensation, step.name, True, self.payload(step, compensation=True))
        )

    def needs_attention(self, why: str, detail: Mapping[str, Any]) -> None:
        self.log("saga.needs_attention", self.definition.steps[self.state.step].name, {"why": why})
        self.set(
            status=SagaStatus.NEEDS_ATTENTION,
            step_status=StepStatus.IDLE,
            deadline=None,
            detail={**self.state.detail, "attention": why, **detail},
        )

    def unchanged(self) -> Decision:
        return Decision(self.state, changed=False)

    def decision(self) -> Decision:
        state = replace(self.state, version=self.state.version + 1, updated_at=self.now)
        return Decision(state, tuple(self._commands), tuple(self._milestones), tuple(self._log))
