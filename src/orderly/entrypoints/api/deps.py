"""Request-scoped dependencies: the container and the calling principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from orderly.bootstrap import Container
from orderly.entrypoints.api.problems import ProblemError
from orderly.services.ports import InvalidToken

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with `sub` and `role` claims")


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


async def get_principal(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("this endpoint needs an Authorization: Bearer token")
    try:
        user_id, role = container.tokens.verify(credentials.credentials)
    except InvalidToken as exc:
        raise _unauthorized(f"invalid token: {exc}") from exc
    return Principal(user_id, role)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "this endpoint is for admins only")
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
