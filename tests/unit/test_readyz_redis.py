"""`/readyz`'s Redis check: a close of its connection that fails after the ping answered
does not turn the readiness answer into a 500 (seen on a loaded machine: "Timed out
closing connection after 2.0")."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis
import redis.asyncio as aioredis

from api.routes import ops

REDIS_URL = os.environ.get("TRAINDEPOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


pytestmark = pytest.mark.skipif(not _reachable(), reason=f"no Redis at {REDIS_URL}")


def test_a_close_that_times_out_after_the_ping_is_still_ok(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []

    async def slow_close(self: aioredis.Redis) -> None:
        closed.append(True)
        raise redis.exceptions.TimeoutError("Timed out closing connection after 2.0")

    monkeypatch.setattr(aioredis.Redis, "aclose", slow_close)
    assert asyncio.run(ops._redis(REDIS_URL)) == "ok"
    assert closed == [True]


def test_an_unreachable_redis_is_named_not_raised() -> None:
    assert asyncio.run(ops._redis("redis://127.0.0.1:1/0")) == "unreachable: ConnectionError"
