"""The one place that wires settings to adapters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from orderly.adapters.auth import JwtTokens
from orderly.adapters.db.engine import create_engine, dispose_engine
from orderly.adapters.db.migrate import check_schema, upgrade
from orderly.adapters.db.postgres import PgUnitOfWork
from orderly.adapters.db.repositories import SqlUnitOfWork
from orderly.adapters.db.seed import seed_demo_catalogue
from orderly.adapters.db.views import SqlViews
from orderly.adapters.system import SystemClock, UuidGenerator
from orderly.config import Settings
from orderly.services.ports import Clock, IdGenerator, OrderViews, Tokens, UnitOfWork


@dataclass
class Container:
    """Everything the entrypoints need, built from one Settings."""

    settings: Settings
    engine: AsyncEngine
    views: OrderViews
    tokens: Tokens
    clock: Clock
    ids: IdGenerator

    def uow(self) -> UnitOfWork:
        if self.engine.dialect.name == "postgresql":
            return PgUnitOfWork(self.engine)
        return SqlUnitOfWork(self.engine)

    @property
    def idempotency_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.idempotency_ttl_seconds)

    async def check_schema(self) -> None:
        await check_schema(self.engine)

    async def migrate(self) -> None:
        await upgrade(self.engine)

    async def seed(self) -> int:
        return await seed_demo_catalogue(self.engine)

    async def close(self) -> None:
        await dispose_engine(self.engine)


def configure_logging(settings: Settings) -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(processors=[*processors, renderer])


def bootstrap(settings: Settings | None = None, *, clock: Clock | None = None) -> Container:
    """Build the container; connects to nothing until first used."""
    settings = settings or Settings()
    clock = clock or SystemClock()
    engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
    return Container(
        settings=settings,
        engine=engine,
        views=SqlViews(engine),
        tokens=JwtTokens(
            settings.jwt_secret,
            settings.jwt_issuer,
            timedelta(seconds=settings.jwt_ttl_seconds),
            clock,
        ),
        clock=clock,
        ids=UuidGenerator(),
    )
