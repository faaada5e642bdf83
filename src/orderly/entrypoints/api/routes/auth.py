"""Development sign-in for the web app; disabled outside ORDERLY_ENV=dev/test."""

from __future__ import annotations

from fastapi import APIRouter

from orderly.entrypoints.api.deps import ContainerDep
from orderly.entrypoints.api.problems import ProblemError, problem_responses
from orderly.entrypoints.api.schemas import DevLoginIn, TokenOut
from orderly.services.ports import JSON

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post(
    "/dev-login",
    response_model=TokenOut,
    summary="Issue a token for any user id (dev and test only)",
    responses=problem_responses(400, 404, 413, 422),
)
async def dev_login(body: DevLoginIn, container: ContainerDep) -> JSON:
    if not container.settings.dev_login_enabled:
        raise ProblemError(404, "not-found", "dev login is disabled")
    role = "admin" if body.admin else "customer"
    token = container.tokens.issue(body.user_id, role)
    return {"token": token, "tokenType": "Bearer", "userId": body.user_id, "role": role}
