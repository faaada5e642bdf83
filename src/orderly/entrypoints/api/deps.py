"""Request-scoped dependencies: the container and the calling principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from orderly.bootstrap import Container
from orderly.entrypoints.api.problems import ProblemError
from orderly.services.ports import InvalidToken


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="orderly"'}
    )


def _bearer_token(request: Request) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header, read as FastAPI's
    ``HTTPBearer`` reads them (scheme case-insensitive, surrounding spaces dropped)."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if not scheme or not token or scheme.lower() != "bearer":
        return None
    return token


def authenticate(request: Request) -> Principal:
    """The principal of the request's bearer token; 401 without a valid one."""
    token = _bearer_token(request)
    if token is None:
        raise _unauthorized("this endpoint needs an Authorization: Bearer token")
    container: Container = request.app.state.container
    try:
        user_id, role = container.tokens.verify(token)
    except InvalidToken as exc:
        raise _unauthorized(f"invalid token: {exc}") from exc
    return Principal(user_id, role)


class BearerPrincipal(HTTPBearer):
    """The bearer-token security scheme as one dependency that answers the principal.

    Being an ``HTTPBearer``, it puts the scheme in the OpenAPI document as before; resolving
    the principal itself saves the two dependencies (container, credentials) that every
    authenticated request used to solve.
    """

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return authenticate(request)


BEARER = BearerPrincipal(
    scheme_name="HTTPBearer",
    description="JWT (HS256) with `sub` and `role` claims",
    auto_error=False,
)

PrincipalDep = Annotated[Principal, Depends(BEARER)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "this endpoint is for admins only")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
