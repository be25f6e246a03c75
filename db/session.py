"""Engine and session factory. The request or task boundary owns the commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from traindepot.settings import get_settings


def sqlalchemy_url(url: str) -> str:
    """Use psycopg 3 whatever scheme the user wrote (`postgres://`, `postgresql://`)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The URL as libpq and asyncpg read it (`postgresql://`), whatever driver it names."""
    for prefix in ("postgresql+psycopg://", "postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@lru_cache(maxsize=4)
def get_engine(url: str | None = None, *, api: bool = False) -> Engine:
    """The process' pool: `db_pool_size` connections kept, up to `db_max_overflow` more
    opened for a burst, each tested on checkout (a round trip), for the workers' long-lived
    processes. `api`: the API's pool (api/database.py), which admits exactly
    `db_pool_capacity` database calls at once: it keeps all of them open (an overflow
    connection is closed when it comes back, so under steady load every call beyond
    `db_pool_size` paid a new connection, about 13 ms here) and does not ping: a dead
    connection fails its request with a 503 and SQLAlchemy replaces the pool."""
    settings = get_settings()
    return create_engine(
        sqlalchemy_url(url or settings.require_database_url()),
        pool_pre_ping=not api,
        pool_size=settings.db_pool_capacity if api else settings.db_pool_size,
        max_overflow=0 if api else settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Fail fast when the database is down: the API answers 503 rather than hanging.
        connect_args={"connect_timeout": 5},
    )


@lru_cache(maxsize=8)
def _factory(url: str | None, api: bool = False, autocommit: bool = False) -> sessionmaker[Session]:
    engine = get_engine(url, api=api)
    if autocommit:
        # Each statement on its own: no BEGIN before it and no ROLLBACK after, two round
        # trips fewer for a read. psycopg switches this on the connection itself (no
        # statement), and the pool switches it back when the connection returns.
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    return sessionmaker(engine, expire_on_commit=False)


def renew_api_pool() -> None:
    """Close the API pool's idle connections (PostgreSQL restarted: they are dead); the next
    checkouts open new ones. The same engine `new_session(api=True)` uses (the same
    arguments to the cached `get_engine` as `_factory` passes)."""
    get_engine(None, api=True).dispose()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    session = _factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def new_session(url: str | None = None, *, api: bool = False, autocommit: bool = False) -> Session:
    return _factory(url, api, autocommit)()
