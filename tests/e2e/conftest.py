"""Fixtures for the end-to-end tests: a real `orderly up` per test module, and CLI tokens."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import OrderlyServer, run_cli, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrderlyServer]:
    """`python -m orderly up` on a free port with a fresh SQLite database (ORDERLY_ENV=test)."""
    with running_server(tmp_path_factory.mktemp("orderly-up")) as running:
        yield running


@pytest.fixture
def http(server: OrderlyServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def cli_token(server: OrderlyServer, user: str, *admin: str) -> str:
    """A token printed by `python -m orderly token USER` run with the server's environment."""
    result = run_cli(["token", user, *admin], server.env, server.workdir)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def alice_token(server: OrderlyServer) -> str:
    return cli_token(server, "alice")
