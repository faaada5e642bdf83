"""The benchmark databases: fresh per run, migrated and seeded by orderly's own CLI.

Also the write accounting behind "a duplicate-key retry costs no write": row counts, the
per-table tuple counters of ``pg_stat_user_tables``, the WAL position and ``pg_stat_wal``
(records, full-page images), transaction ids handed out and the key table's id sequence, read
before and after the replays. WAL and ``pg_stat_wal`` are cluster-wide: other databases' work
in that window is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

SOCKET_DIRECTORY = "/var/run/postgresql"
TCP_HOST = "127.0.0.1"
INTAKE_TABLES = ("idempotency_keys", "orders", "order_lines", "order_events", "outbox_messages")
TUPLE_COUNTERS = ("n_tup_ins", "n_tup_upd", "n_tup_del", "n_tup_hot_upd")
ORDERLY = str(Path(sys.executable).with_name("orderly"))


def default_host() -> str:
    """The local server's Unix socket directory if it has one, else 127.0.0.1.

    A database on the same machine is reached through its socket: on this project's 2-core
    machines a round trip over loopback TCP cost the worker and PostgreSQL about a quarter more
    CPU (bench/README.md, "Saga").
    """
    if Path(SOCKET_DIRECTORY, ".s.PGSQL.5432").exists():
        return SOCKET_DIRECTORY
    return TCP_HOST


_host = default_host()


def use_host(host: str) -> None:
    """Connect every benchmark connection to ``host``: 127.0.0.1, or a socket directory."""
    global _host
    if host not in (TCP_HOST, "localhost") and not host.startswith("/"):
        raise ValueError(f"{host!r}: only 127.0.0.1 or a local socket directory")
    _host = host


def host() -> str:
    return _host


def connection_kind() -> str:
    return f"unix socket {_host}" if _host.startswith("/") else f"tcp {_host}:5432"


def dsn(database: str) -> str:
    return _url("postgresql", database)


def sqlalchemy_url(database: str) -> str:
    return _url("postgresql+asyncpg", database)


def _url(scheme: str, database: str) -> str:
    if _host.startswith("/"):
        return f"{scheme}://postgres@/{database}?host={quote(_host)}"
    return f"{scheme}://postgres@{_host}:5432/{database}"


def admin_dsn() -> str:
    return dsn("postgres")


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(admin_dsn())
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _orderly(args: list[str], env: Mapping[str, str]) -> str:
    """Run an ``orderly`` CLI command; return its standard output."""
    process = await asyncio.create_subprocess_exec(
        ORDERLY,
        *args,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"orderly {' '.join(args)} failed: {err.decode().strip()}")
    return out.decode().strip()


async def recreate(database: str, env: Mapping[str, str]) -> None:
    """Drop and create ``database``, then ``orderly migrate`` and ``orderly seed`` it."""
    await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{database}"')
    db_env = {**env, "ORDERLY_DATABASE_URL": sqlalchemy_url(database)}
    await _orderly(["migrate"], db_env)
    await _orderly(["seed"], db_env)


async def tokens(users: list[str], env: Mapping[str, str]) -> list[str]:
    """One bearer token per user, printed by ``orderly token``."""
    return list(await asyncio.gather(*(_orderly(["token", user], env) for user in users)))


async def server_version() -> str:
    conn = await asyncpg.connect(admin_dsn())
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def wait_idle(database: str, timeout_s: float = 10.0) -> None:
    """Wait until no other session is connected: an exiting session flushes its statistics."""
    conn = await asyncpg.connect(dsn(database))
    try:
        deadline = time.monotonic() + timeout_s
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions on {database} did not end")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def settle(database: str) -> None:
    """VACUUM ANALYZE the intake tables (so autovacuum stays away for a while), CHECKPOINT."""
    conn = await asyncpg.connect(dsn(database))
    try:
        await conn.execute("VACUUM (ANALYZE) " + ", ".join(INTAKE_TABLES))
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    """Everything a write would move."""

    rows: dict[str, int]
    tuples: dict[str, dict[str, int]]
    wal_lsn: str
    wal_records: int
    wal_fpi: int
    next_xid: int
    key_sequence: int


async def write_snapshot(database: str) -> WriteSnapshot:
    """Read the counters in a fresh session (statistics snapshots are cached per transaction)."""
    conn = await asyncpg.connect(dsn(database))
    try:
        rows = {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in INTAKE_TABLES}
        stats = await conn.fetch(
            f"SELECT relname, {', '.join(TUPLE_COUNTERS)} FROM pg_stat_user_tables "
            "WHERE relname = ANY($1::text[])",
            list(INTAKE_TABLES),
        )
        return WriteSnapshot(
            rows=rows,
            tuples={r["relname"]: {c: int(r[c]) for c in TUPLE_COUNTERS} for r in stats},
            wal_lsn=str(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")),
            wal_records=int(await conn.fetchval("SELECT wal_records FROM pg_stat_wal")),
            wal_fpi=int(await conn.fetchval("SELECT wal_fpi FROM pg_stat_wal")),
            next_xid=int(
                await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
            ),
            key_sequence=int(await conn.fetchval("SELECT last_value FROM idempotency_keys_id_seq")),
        )
    finally:
        await conn.close()


async def wal_bytes_between(start_lsn: str, end_lsn: str) -> int:
    conn = await asyncpg.connect(admin_dsn())
    try:
        diff = await conn.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", end_lsn, start_lsn
        )
        return int(diff)
    finally:
        await conn.close()


async def current_wal_lsn() -> str:
    conn = await asyncpg.connect(admin_dsn())
    try:
        return str(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
    finally:
        await conn.close()


def write_delta(before: WriteSnapshot, after: WriteSnapshot, wal_bytes: int) -> dict[str, Any]:
    """What changed between two snapshots; a write-free interval has zeros in rows and tuples."""
    return {
        "rows": {t: after.rows[t] - before.rows[t] for t in INTAKE_TABLES},
        "tuples": {
            t: {c: after.tuples[t][c] - before.tuples[t][c] for c in TUPLE_COUNTERS}
            for t in INTAKE_TABLES
        },
        "wal_bytes": wal_bytes,
        "wal_records": after.wal_records - before.wal_records,
        "wal_full_page_images": after.wal_fpi - before.wal_fpi,
        "xids_assigned": after.next_xid - before.next_xid,
        "key_sequence_advanced": after.key_sequence - before.key_sequence,
    }


def add_host_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pg-host",
        default=None,
        help=f"PostgreSQL: 127.0.0.1 or a socket directory (default {default_host()})",
    )


def apply_host_option(parser: argparse.ArgumentParser, given: str | None) -> None:
    if given is not None:
        try:
            use_host(given)
        except ValueError as exc:
            parser.error(f"--pg-host {exc}")
