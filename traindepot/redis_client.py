"""The one way this project makes a Redis client (the broker's own connections are Celery's).

Clients are shared per URL and thread-safe (a connection pool each); short timeouts, because
nothing that uses Redis here may hang on it: live events and the worker registry are
conveniences, and the job row in Postgres is the record.
"""

from __future__ import annotations

from functools import lru_cache

import redis

TIMEOUT_SECONDS = 2.0


@lru_cache(maxsize=8)
def client(url: str) -> redis.Redis:
    """The process' client for `url` (made on first use)."""
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
    )
