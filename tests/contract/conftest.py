"""A real `orderly up` for the contract tests, once on SQLite and once on the real PostgreSQL
(which, unlike SQLite, refuses some text), and bearer tokens that it accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from orderly.adapters.auth import JwtTokens
from orderly.adapters.system import SystemClock
from tests.conftest import throwaway_postgres_database
from tests.support.server import OrderlyServer, running_server

JWT_SECRET = "contract-tests-secret-" + "x" * 16
CUSTOMER = "contract-customer"


@dataclass(frozen=True)
class Tokens:
    customer: str
    admin: str


@pytest.fixture(scope="module")
async def contract_postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for the contract server, dropped afterwards."""
    async with throwaway_postgres_database("orderly_contract") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OrderlyServer]:
    workdir = tmp_path_factory.mktemp(f"orderly-contract-{request.param}")
    # Access logs of thousands of requests would only slow the server down.
    overrides = {"ORDERLY_JWT_SECRET": JWT_SECRET, "ORDERLY_LOG_LEVEL": "warning"}
    if request.param == "postgres":
        overrides["ORDERLY_DATABASE_URL"] = request.getfixturevalue("contract_postgres_url")
    with running_server(workdir, overrides=overrides) as running:
        yield running


@pytest.fixture(scope="module")
def tokens() -> Tokens:
    issuer = JwtTokens(JWT_SECRET, "orderly", timedelta(hours=1), SystemClock())
    return Tokens(issuer.issue(CUSTOMER, "customer"), issuer.issue("contract-admin", "admin"))
