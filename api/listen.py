"""A confirmed Redis subscription for the API's streams (a job's events, the job list's
changes), or None when Redis cannot be reached: the streams then poll the database."""

from __future__ import annotations

import logging

import anyio
import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)


async def subscribe(redis_url: str | None, channel: str) -> aioredis.client.PubSub | None:
    """A confirmed subscription, or None when Redis cannot be reached."""
    if not redis_url:
        return None
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0)
    pubsub = client.pubsub()
    try:
        with anyio.fail_after(3):
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
    except (redis.RedisError, OSError, TimeoutError) as exc:
        log.warning("events: Redis unavailable (%s); polling the database", exc)
        await close(pubsub)
        return None


async def close(pubsub: aioredis.client.PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8.2
        await pubsub.connection_pool.disconnect()
    except (redis.RedisError, OSError) as exc:
        log.debug("events: closing the subscription: %s", exc)
