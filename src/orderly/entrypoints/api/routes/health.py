"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from orderly.entrypoints.api.deps import ContainerDep
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.schemas import Health
from orderly.services.ports import JSON, StorageUnavailable

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Health, summary="The process is up")
async def live() -> JSON:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Health,
    summary="The database answers",
    responses=problem_responses(503),
)
async def ready(container: ContainerDep) -> JSON:
    try:
        await container.views.ping()
    except StorageUnavailable as exc:
        raise ProblemError(503, "not-ready", f"database unreachable: {exc}") from exc
    return {"status": "ok"}
