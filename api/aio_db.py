"""The API's async way to the database, for its hottest reads: `await fetch_row(sql, args)`.

`api/database.py`'s `run_db` serves every other route: a worker thread with an ORM session,
which is what writes and multi-statement work want. A read polled by every waiting client
(`GET /jobs/{id}`) paid for that path's thread hand-off, session and ORM on each request,
about 2 ms of CPU where the framework alone spends 0.2 (docs/benchmarks.md). Here a
single statement runs on an asyncpg connection from the event loop itself: no thread, no
session, and asyncpg prepares each statement once per connection.

Admission is the pool: a request waits at most `api_db_wait_seconds` for one of its
`api_read_pool_size` connections and is then answered 503 with `Retry-After` (`Saturated`,
as `run_db` does); a database that cannot be reached is a 503 too (`ServiceUnavailable`),
never a hang or a 500. The pool belongs to the process' event loop: it is opened on first
use and closed by the app's lifespan (`close`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
import asyncpg

from api.database import Saturated
from api.errors import ServiceUnavailable
from db.session import libpq_url, renew_api_pool
from traindepot.settings import get_settings

_pool: asyncpg.Pool | None = None
_opening = asyncio.Lock()

# What "the database cannot be reached" looks like from asyncpg: the connection could not
# be made or was lost, or the server is starting or shutting down.
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
)


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """The pool's connections run single read statements, in autocommit: they leave no
    session state (settings, cursors, listeners, locks) behind. asyncpg's default reset
    clears all of those with a statement on every release, a second round trip per read,
    which doubled PostgreSQL's CPU per `GET /jobs/{id}` (docs/benchmarks.md). An open
    transaction is still rolled back: asyncpg does that before calling this."""


async def _get_pool() -> asyncpg.Pool:
    global _pool
    if _pool is None:
        async with _opening:
            if _pool is None:
                settings = get_settings()
                _pool = await asyncpg.create_pool(
                    libpq_url(settings.require_database_url()),
                    min_size=1,
                    max_size=settings.api_read_pool_size,
                    timeout=settings.db_pool_timeout_seconds,  # to connect
                    command_timeout=settings.db_pool_timeout_seconds * 6,
                    reset=_nothing_to_reset,
                )
    return _pool


async def fetch_row(sql: str, args: Sequence[Any]) -> asyncpg.Record | None:
    """The first row of `sql` (None when it has none). Raises `Saturated` when no
    connection frees up within `api_db_wait_seconds`, `ServiceUnavailable` when the
    database cannot be reached.

    A read that fails on a dead connection (the server restarted since it was opened) is
    read once more: the pool then replaces every connection it holds (`expire_connections`,
    as SQLAlchemy's pool does on a disconnect), and a read is safe to repeat. A database
    that is still down fails that second read too: 503."""
    try:
        return await _fetch_row(sql, args)
    except _UNREACHABLE:
        await _expire()
    try:
        return await _fetch_row(sql, args)
    except _UNREACHABLE as exc:
        await _expire()
        raise ServiceUnavailable("the database is unreachable; retry shortly") from exc


async def _expire() -> None:
    if _pool is not None:
        await _pool.expire_connections()


async def _fetch_row(sql: str, args: Sequence[Any]) -> asyncpg.Record | None:
    pool = await _get_pool()
    try:
        connection = await pool.acquire(timeout=get_settings().api_db_wait_seconds)
    except TimeoutError:
        raise Saturated("the API is at capacity; retry shortly") from None
    try:
        row: asyncpg.Record | None = await connection.fetchrow(sql, *args)
        return row
    except TimeoutError:  # `command_timeout`: asyncpg has cancelled the statement
        raise ServiceUnavailable("the database did not answer in time; retry shortly") from None
    finally:
        await pool.release(connection)


async def forget_connections() -> None:
    """PostgreSQL went away (the job-change listener lost its connection, api/job_docs.py):
    every pooled connection of this process may be dead. Both pools (this one and the
    ORM's, `db.session.renew_api_pool`) open new ones on their next use, instead of each
    dead connection failing one request with a 503 once the server is back."""
    await _expire()
    await anyio.to_thread.run_sync(renew_api_pool)


async def close() -> None:
    """Close this process' pool (the app's shutdown)."""
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        await pool.close()
