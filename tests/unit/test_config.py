"""Settings guard rails."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orderly.config import DEV_JWT_SECRET, Settings


def test_prod_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="ORDERLY_JWT_SECRET"):
        Settings(env="prod", jwt_secret=DEV_JWT_SECRET)


def test_prod_refuses_a_short_secret() -> None:
    with pytest.raises(ValidationError, match="ORDERLY_JWT_SECRET"):
        Settings(env="prod", jwt_secret="short")


def test_prod_accepts_a_real_secret_and_dev_login_is_off() -> None:
    settings = Settings(env="prod", jwt_secret="s" * 40)
    assert not settings.dev_login_enabled
    assert Settings(env="dev").dev_login_enabled


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLY_IDEMPOTENCY_TTL_SECONDS", "3600")
    monkeypatch.setenv("ORDERLY_DATABASE_URL", "sqlite+aiosqlite:///x.db")
    settings = Settings()
    assert settings.idempotency_ttl_seconds == 3600
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
