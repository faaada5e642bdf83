"""The dead-letter queue for admins: list, inspect and replay parked messages.

A replay re-queues the message under its own id through the outbox, so it meets the consumer's
inbox like any delivery: a message whose effect was applied meanwhile changes nothing. A letter
is replayed at most once (a second request is 409), which also makes the POST safe to retry
without an Idempotency-Key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response

from orderly.entrypoints.api.deps import AdminDep, ContainerDep, Principal
from orderly.entrypoints.api.dlq_schemas import (
    DeadLetterOut,
    DeadLetterPage,
    ReplayAccepted,
    accepted_of,
    letter_of,
    summary_of,
)
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.schemas import NO_NUL
from orderly.services.dead_letters import DeadLetterNotFound, NotReplayable

router = APIRouter(prefix="/api/admin/dlq", tags=["admin"])

DLQ_ROUTE = "/api/admin/dlq"
MAX_ID = 2**63 - 1
REQUESTED_BY_MAX = 128  # the width of dead_letter_replays.requested_by

LetterId = Annotated[int, Path(ge=1, le=MAX_ID, description="the dead letter's id")]
StatusFilter = Literal["parked", "replayed", "all"]


def _not_found(exc: DeadLetterNotFound) -> ProblemError:
    return ProblemError(404, "not-found", str(exc))


@router.get(
    "",
    response_model=DeadLetterPage,
    summary="Dead letters, oldest first, a page at a time (admin)",
    responses=problem_responses(401, 403, 422, 503),
)
async def list_dead_letters(
    container: ContainerDep,
    _admin: AdminDep,
    status: StatusFilter = "parked",
    consumer: Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after_id: Annotated[int, Query(alias="afterId", ge=0, le=MAX_ID)] = 0,
) -> DeadLetterPage:
    letters = await container.dead_letter_desk().letters(
        status=None if status == "all" else status,
        consumer=consumer,
        limit=limit + 1,
        after_id=after_id,
    )
    page = letters[:limit]
    more = len(letters) > limit
    return DeadLetterPage(
        items=[summary_of(letter) for letter in page],
        next_after_id=page[-1].id if more else None,
    )


@router.get(
    "/{letter_id}",
    response_model=DeadLetterOut,
    summary="One dead letter: message, error, traceback, context and replays (admin)",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def get_dead_letter(
    letter_id: LetterId, container: ContainerDep, _admin: AdminDep
) -> DeadLetterOut:
    try:
        return letter_of(await container.dead_letter_desk().show(letter_id))
    except DeadLetterNotFound as exc:
        raise _not_found(exc) from exc


def _requested_by(admin: Principal) -> str:
    return f"admin:{admin.user_id}"[:REQUESTED_BY_MAX]


@router.post(
    "/{letter_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    summary="Queue a parked dead letter again (admin); `dryRun=true` only checks that it could be",
    responses={
        200: {
            "description": "Dry run: the letter could be replayed; nothing was queued",
            "model": ReplayAccepted,
        },
        202: {
            "description": "Queued; the consumer records the result in the letter's replays",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 403, 404, 409, 413, 422, 503),
    },
)
async def replay_dead_letter(
    letter_id: LetterId,
    response: Response,
    container: ContainerDep,
    admin: AdminDep,
    dry_run: Annotated[bool, Query(alias="dryRun")] = False,
) -> ReplayAccepted:
    desk = container.dead_letter_desk()
    try:
        outcome = await desk.replay(letter_id, requested_by=_requested_by(admin), dry_run=dry_run)
    except DeadLetterNotFound as exc:
        raise _not_found(exc) from exc
    except NotReplayable as exc:
        replays = exc.letter.replays
        raise ProblemError(
            409,
            "dead-letter-already-replayed",
            str(exc),
            replayId=replays[-1].id if replays else None,
        ) from exc
    if dry_run:
        response.status_code = 200
    else:
        response.headers["Location"] = f"{DLQ_ROUTE}/{letter_id}"
    return accepted_of(outcome)
