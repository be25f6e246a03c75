"""A per-process cache of authenticated keys, trusted only while revocations can reach it.

Without it every request pays one more database round trip for its key (a quarter of the
throughput of `GET /jobs/{id}`, measured by bench/auth.py). A cached key is trusted for at
most `api_key_cache_seconds`, and only while this process is subscribed to the revocation
channel on Redis: `POST /keys/{id}`'s revoke and `traindepot keys revoke` publish the key's
id there after their commit, and every API process drops it at once. While the subscription
is down (Redis unreachable, or not yet confirmed), the cache is bypassed and emptied: every
request reads the database, so a revocation is never missed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import anyio
import redis
import redis.asyncio as aioredis

from db.keys import Holder
from traindepot.redis_client import client

log = logging.getLogger(__name__)
CHANNEL = "traindepot:keys:revoked"


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[Holder, float]] = {}
        self._lock = threading.Lock()
        self.live = False  # subscribed: revocations reach this process
        self.ttl = 0.0

    def get(self, digest: bytes) -> Holder | None:
        if not self.live:
            return None
        entry = self._entries.get(digest)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, digest: bytes, holder: Holder) -> None:
        if self.live and self.ttl > 0:
            with self._lock:
                self._entries[digest] = (holder, time.monotonic() + self.ttl)

    def drop(self, key_id: uuid.UUID | str) -> None:
        with self._lock:
            for digest in [
                d for d, (h, _) in self._entries.items() if str(h.key_id) == str(key_id)
            ]:
                del self._entries[digest]

    def go_dark(self) -> None:
        """Revocations may be missed from now on: trust nothing cached."""
        self.live = False
        with self._lock:
            self._entries.clear()


cache = KeyCache()


def announce_revoked(redis_url: str | None, key_id: uuid.UUID) -> None:
    """After the revoke's commit: every API process drops the key (best effort; an API
    process that cannot hear it does not use its cache)."""
    cache.drop(key_id)
    if not redis_url:
        return
    try:
        client(redis_url).publish(CHANNEL, str(key_id))
    except redis.RedisError as exc:
        log.warning("could not announce the revocation of key %s: %s", key_id, exc)


async def follow_revocations(redis_url: str | None, ttl: float) -> None:
    """Run for the app's lifetime: keep the subscription, drop revoked keys."""
    cache.ttl = ttl
    if not redis_url or ttl <= 0:
        return
    while True:
        subscriber = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
        pubsub = subscriber.pubsub()
        try:
            await pubsub.subscribe(CHANNEL)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    cache.live = True
                elif message["type"] == "message":
                    cache.drop(message["data"].decode())
        except (redis.RedisError, OSError) as exc:
            log.info("key revocations unavailable (%s): keys are checked on every request", exc)
        finally:
            cache.go_dark()
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis 8.2
                await subscriber.aclose()
        await anyio.sleep(1.0)
