"""The `orderly` command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import jwt
import pytest

from tests.support.server import (
    free_port,
    orderly_env,
    port_is_free,
    run_cli,
    running_server,
)

# Commands that must give up on their own should do so long before this.
FAILING_COMMAND_TIMEOUT = 30.0


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 1, nothing on stdout, exactly one line `error: ...` on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""
    return lines[0]


def rows_added(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    match = re.search(r"\((\d+) rows added\)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def test_api_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli(
        ["api", "--port", str(port)],
        orderly_env(tmp_path),
        tmp_path,
        timeout=FAILING_COMMAND_TIMEOUT,
    )
    assert_one_line_error(result, "orderly migrate")
    assert port_is_free(port)


def test_migrate_seed_twice_then_api_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = orderly_env(tmp_path)

    migrated = run_cli(["migrate"], env, tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "database schema is up to date" in migrated.stdout

    assert rows_added(run_cli(["seed"], env, tmp_path)) > 0
    assert rows_added(run_cli(["seed"], env, tmp_path)) == 0

    with running_server(tmp_path, "api") as server:
        with server.client() as http:
            products = http.get("/api/products").json()
        assert [p["sku"] for p in products] == [f"PROD-00{i}" for i in range(1, 7)]
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        output = server.output()
        assert "Application shutdown complete" in output
        assert "Traceback" not in output


def test_token_refuses_an_empty_user_id(tmp_path: Path) -> None:
    result = run_cli(["token", ""], orderly_env(tmp_path), tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "user id" in result.stderr


def test_token_roles(tmp_path: Path) -> None:
    env = orderly_env(tmp_path)
    admin = run_cli(["token", "bob", "--admin"], env, tmp_path)
    customer = run_cli(["token", "carol"], env, tmp_path)
    for result in (admin, customer):
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.strip().splitlines()) == 1

    admin_claims = jwt.decode(admin.stdout.strip(), options={"verify_signature": False})
    customer_claims = jwt.decode(customer.stdout.strip(), options={"verify_signature": False})
    assert (admin_claims["sub"], admin_claims["role"]) == ("bob", "admin")
    assert (customer_claims["sub"], customer_claims["role"]) == ("carol", "customer")
    assert admin_claims["exp"] > admin_claims["iat"]


BAD_SETTINGS: list[tuple[str, dict[str, str], list[str], str]] = [
    ("port not a number", {"ORDERLY_PORT": "notanumber"}, ["up"], "ORDERLY_PORT"),
    ("port option out of range", {}, ["up", "--port", "70000"], "--port"),
    ("prod with the dev secret", {"ORDERLY_ENV": "prod"}, ["up"], "ORDERLY_JWT_SECRET"),
    ("prod with the dev secret (token)", {"ORDERLY_ENV": "prod"}, ["token", "a"], "JWT_SECRET"),
    ("unknown env", {"ORDERLY_ENV": "staging"}, ["migrate"], "ORDERLY_ENV"),
    ("unknown log level", {"ORDERLY_LOG_LEVEL": "loud"}, ["up"], "ORDERLY_LOG_LEVEL"),
    ("unparsable database url", {"ORDERLY_DATABASE_URL": "nope"}, ["migrate"], "DATABASE_URL"),
]


@pytest.mark.parametrize(
    ("overrides", "args", "fragment"),
    [case[1:] for case in BAD_SETTINGS],
    ids=[case[0] for case in BAD_SETTINGS],
)
def test_bad_settings_give_one_line_and_exit_1(
    tmp_path: Path, overrides: dict[str, str], args: list[str], fragment: str
) -> None:
    result = run_cli(
        args, orderly_env(tmp_path, overrides), tmp_path, timeout=FAILING_COMMAND_TIMEOUT
    )
    assert_one_line_error(result, "bad settings", fragment)


def test_unreachable_database_gives_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "orderly.db"
    env = orderly_env(tmp_path, {"ORDERLY_DATABASE_URL": f"sqlite+aiosqlite:///{missing}"})
    for command in (["migrate"], ["seed"], ["up", "--port", str(free_port())]):
        result = run_cli(command, env, tmp_path, timeout=FAILING_COMMAND_TIMEOUT)
        assert_one_line_error(result, "unable to open database file")
