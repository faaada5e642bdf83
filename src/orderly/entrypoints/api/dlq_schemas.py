"""Response bodies of the dead-letter admin API (camelCase, times as ISO-8601 UTC strings)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from orderly.entrypoints.api.schemas import ApiModel
from orderly.services.dead_letters import ReplayOutcome
from orderly.services.ports import DeadLetter, Replay


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ReplayOut(ApiModel):
    id: int
    requested_by: str = Field(description="`admin:<user id>` (API) or `cli:<os user>` (CLI)")
    requested_at: str
    result: str = Field(description="queued, applied, already-applied or failed-again")
    finished_at: str | None


class DeadLetterSummary(ApiModel):
    id: int
    consumer: str
    message_id: str
    type: str
    key: str
    correlation_id: str
    attempts: int
    error: str
    first_failed_at: str
    last_failed_at: str
    status: str = Field(description="parked (may be replayed) or replayed")
    created_at: str


class DeadLetterOut(DeadLetterSummary):
    causation_id: str | None
    message_created_at: str
    payload: dict[str, Any]
    headers: dict[str, str]
    context: dict[str, Any] = Field(description="what the consumer recorded when it gave up")
    traceback: str
    replays: list[ReplayOut] = Field(description="every replay of this letter, oldest first")


class DeadLetterPage(ApiModel):
    items: list[DeadLetterSummary] = Field(description="oldest first")
    next_after_id: int | None = Field(
        description="pass as `afterId` for the next page; null on the last page"
    )


class ReplayAccepted(ApiModel):
    letter_id: int
    replay_id: int | None = Field(description="the replay record; null for a dry run")
    message_id: str = Field(description="the message is queued again under its own id")
    dry_run: bool


def _summary_fields(letter: DeadLetter) -> dict[str, Any]:
    message = letter.message
    return {
        "id": letter.id,
        "consumer": letter.consumer,
        "message_id": message.id,
        "type": message.type,
        "key": message.key,
        "correlation_id": message.correlation_id,
        "attempts": letter.attempts,
        "error": letter.error,
        "first_failed_at": iso(letter.first_failed_at),
        "last_failed_at": iso(letter.last_failed_at),
        "status": letter.status,
        "created_at": iso(letter.created_at),
    }


def summary_of(letter: DeadLetter) -> DeadLetterSummary:
    return DeadLetterSummary(**_summary_fields(letter))


def _replay_of(replay: Replay) -> ReplayOut:
    return ReplayOut(
        id=replay.id,
        requested_by=replay.requested_by,
        requested_at=iso(replay.requested_at),
        result=replay.result,
        finished_at=iso(replay.finished_at) if replay.finished_at else None,
    )


def letter_of(letter: DeadLetter) -> DeadLetterOut:
    message = letter.message
    return DeadLetterOut(
        **_summary_fields(letter),
        causation_id=message.causation_id,
        message_created_at=iso(message.created_at),
        payload=message.payload,
        headers=message.headers,
        context=letter.context,
        traceback=letter.traceback,
        replays=[_replay_of(r) for r in letter.replays],
    )


def accepted_of(outcome: ReplayOutcome) -> ReplayAccepted:
    return ReplayAccepted(
        letter_id=outcome.letter_id,
        replay_id=outcome.replay_id,
        message_id=outcome.message_id,
        dry_run=outcome.dry_run,
    )
