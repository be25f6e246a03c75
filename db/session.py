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


@lru_cache(maxsize=4)
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    return create_engine(
        sqlalchemy_url(url or settings.require_database_url()),
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Fail fast when the database is down: the API answers 503 rather than hanging.
        connect_args={"connect_timeout": 5},
    )


@lru_cache(maxsize=4)
def _factory(url: str | None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


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


def new_session(url: str | None = None) -> Session:
    return _factory(url)()
