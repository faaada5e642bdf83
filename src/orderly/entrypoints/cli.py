"""The `orderly` command line."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from orderly.adapters.db.schema import SchemaOutdated
from orderly.bootstrap import Container, UnknownTransport, bootstrap, configure_logging
from orderly.config import InsecureSettings, Settings
from orderly.entrypoints.cli_dlq import dlq_app
from orderly.entrypoints.cli_orders import orders_app, projections_app
from orderly.entrypoints.worker import run_background, stop_on_signals
from orderly.services import idempotency
from orderly.services.ports import StorageUnavailable

app = typer.Typer(
    help="orderly: event-driven order processing.", no_args_is_help=True, add_completion=False
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(orders_app, name="orders")
app.add_typer(projections_app, name="projections")
console = Console()
err = Console(stderr=True)

T = TypeVar("T")


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _settings(host: str | None = None, port: int | None = None) -> Settings:
    # Options go through the same validation as the environment (model_copy would skip it).
    options: dict[str, Any] = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    try:
        return Settings(**options)
    except ValidationError as exc:
        raise _fail(f"bad settings: {_first_error(exc, options)}") from exc
    except InsecureSettings as exc:
        raise _fail(f"bad settings: {exc}") from exc


def _first_error(exc: ValidationError, options: dict[str, Any]) -> str:
    error = exc.errors()[0]
    if not error["loc"]:
        return error["msg"]
    field = str(error["loc"][0])
    name = f"--{field}" if field in options else f"ORDERLY_{field.upper()}"
    return f"{name}: {error['msg']}"


@contextmanager
def _one_line_errors(settings: Settings) -> Iterator[None]:
    """Turn the failures a user can cause (settings, an unreachable database) into one line."""
    try:
        yield
    except (SchemaOutdated, StorageUnavailable, UnknownTransport, OSError) as exc:
        raise _fail(str(exc)) from exc
    except ArgumentError as exc:
        raise _fail(f"bad settings: ORDERLY_DATABASE_URL: {exc}") from exc
    except SQLAlchemyError as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise _fail(f"database {_redact(settings.database_url)}: {first_line}") from exc


def _with_container(settings: Settings, work: Callable[[Container], Awaitable[T]]) -> T:
    async def run() -> T:
        container = bootstrap(settings)
        try:
            return await work(container)
        finally:
            await container.close()

    with _one_line_errors(settings):
        return asyncio.run(run())


def _serve(settings: Settings, *, prepare: bool, background: bool) -> None:
    configure_logging(settings)

    # The web stack loads only for the commands that serve HTTP (workers start faster).
    import uvicorn

    from orderly.entrypoints.api.app import create_app

    async def serve() -> None:
        container = bootstrap(settings)
        try:
            if prepare:
                await container.migrate()
                added = await container.seed()
                if added:
                    console.print(f"seeded the demo catalogue ({added} rows)")
            else:
                await container.check_schema()
            api = create_app(container)
            # Move the ~125k objects of start-up out of the collector's reach: full collections
            # over them paused the server for 90-150 ms under load (bench/README.md).
            gc.collect()
            gc.freeze()
            config = uvicorn.Config(
                api,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=settings.access_log,
                lifespan="on",
            )
            console.print(
                f"orderly is running at [bold]http://{settings.host}:{settings.port}/[/bold] "
                f"(API docs at /docs; database {_redact(settings.database_url)})",
                highlight=False,
            )
            stop = asyncio.Event()
            workers = (
                asyncio.create_task(run_background(container, stop, consume=True, relay=True))
                if background
                else None
            )
            try:
                await uvicorn.Server(config).serve()
            finally:
                stop.set()
                if workers is not None:
                    await workers
        finally:
            await container.close()

    with _one_line_errors(settings), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] ships it): uvicorn only picks it by itself
    when it owns the event loop, and here orderly does."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


Host = Annotated[str | None, typer.Option(help="Interface to listen on.")]
Port = Annotated[int | None, typer.Option(help="Port to listen on.")]


@app.command()
def up(host: Host = None, port: Port = None) -> None:
    """Run everything in one process: migrate, seed, serve API and UI, process orders."""
    _serve(_settings(host=host, port=port), prepare=True, background=True)


@app.command()
def api(host: Host = None, port: Port = None) -> None:
    """Serve the HTTP API only (the schema must be migrated already)."""
    _serve(_settings(host=host, port=port), prepare=False, background=False)


def _run_background(*, consume: bool, relay: bool) -> None:
    settings = _settings()
    configure_logging(settings)

    async def work(container: Container) -> None:
        await container.check_schema()
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_background(container, stop, consume=consume, relay=relay)

    with _one_line_errors(settings), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        container = bootstrap(settings)
        try:
            runner.run(work(container))
        finally:
            runner.run(container.close())


@app.command()
def worker() -> None:
    """Process messages (orders) until stopped: the consumer runtime on ORDERLY_BROKER_URL."""
    _run_background(consume=True, relay=False)


@app.command()
def relay() -> None:
    """Move committed outbox messages to the broker until stopped (not needed for local://)."""
    settings = _settings()
    if urlsplit(settings.broker_url).scheme == "local":
        raise _fail("the local:// transport needs no relay: the outbox table is its queue")
    _run_background(consume=False, relay=True)


@app.command()
def migrate() -> None:
    """Apply the database migrations up to the newest revision."""

    async def work(container: Container) -> None:
        with console.status("migrating the database…"):
            await container.migrate()

    _with_container(_settings(), work)
    console.print("database schema is up to date")


@app.command()
def seed() -> None:
    """Insert the demo warehouses, products and stock that are missing (never resets stock)."""

    async def work(container: Container) -> int:
        await container.check_schema()
        return await container.seed()

    added = _with_container(_settings(), work)
    console.print(f"demo catalogue seeded ({added} rows added)")


@app.command()
def token(
    user_id: Annotated[str, typer.Argument(help="The user id to put in `sub`.")],
    admin: Annotated[bool, typer.Option("--admin", help="Issue an admin token.")] = False,
) -> None:
    """Print a bearer token for USER_ID (role customer, or admin with --admin)."""
    if not user_id.strip():
        raise _fail("the user id may not be empty")
    settings = _settings()
    with _one_line_errors(settings):
        container = bootstrap(settings)
    typer.echo(container.tokens.issue(user_id, "admin" if admin else "customer"))


@app.command("purge-keys")
def purge_keys() -> None:
    """Delete expired idempotency keys now (the API also does it periodically)."""

    async def work(container: Container) -> int:
        await container.check_schema()
        with console.status("purging expired idempotency keys…"):
            return await idempotency.purge_expired(container.uow, container.clock)

    purged = _with_container(_settings(), work)
    console.print(f"purged {purged} expired idempotency keys")


def main() -> None:
    app()
