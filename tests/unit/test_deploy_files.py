"""The deploy files are checked statically (there is no Docker engine on CI machines)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from orderly.entrypoints.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _cli_commands() -> set[str]:
    command = get_command(app)
    return set(getattr(command, "commands", {}))


def test_compose_file_is_valid_and_complete() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "migrate", "api", "nginx"} <= set(services)
    env = services["api"]["environment"]
    assert env["ORDERLY_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["ORDERLY_ENV"] == "prod"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("migrate", "api"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_every_orderly_command_in_deploy_files_exists() -> None:
    lines = [
        line
        for p in DEPLOY.iterdir()
        if p.is_file()
        for line in p.read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    used = set(re.findall(r"\borderly\"?,? \"?([a-z-]+)", "\n".join(lines)))
    assert used, "no orderly command found in the deploy files"
    assert used <= _cli_commands(), used - _cli_commands()


def test_nginx_limits_match_the_api_body_limit() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "client_max_body_size 64k;" in conf
    assert "proxy_pass http://orderly_api;" in conf
