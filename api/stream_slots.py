"""At most N concurrent long-lived responses (event streams, log followers) per key and in
all. A slot is taken before the route runs and given back when its response is over (the
stream ended or the client went away); beyond the limits the answer is 429 with
Retry-After.

`StreamSlots` is the counter; `StreamLimit` the pure ASGI middleware that applies it to the
streaming routes. The key is the client's address until tenants exist; `key_of` is where a
tenant's id goes then.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["StreamLimit", "StreamSlots", "client_key", "is_stream"]

_EVENTS = re.compile(r"^/jobs/[^/]+/events/?$")
_LOGS = re.compile(r"^/jobs/[^/]+/logs/?$")


class StreamSlots:
    """Counts taken slots per key and in all (thread-safe)."""

    def __init__(self, *, per_key: int, total: int) -> None:
        self.per_key = per_key
        self.total = total
        self._taken: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            if self._taken[key] >= self.per_key or self._taken.total() >= self.total:
                return False
            self._taken[key] += 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            self._taken[key] -= 1
            if self._taken[key] <= 0:
                del self._taken[key]

    def in_use(self, key: str | None = None) -> int:
        with self._lock:
            return self._taken.total() if key is None else self._taken[key]


def is_stream(scope: Scope) -> bool:
    """An event stream, or a log read with `follow=true`."""
    if scope["type"] != "http" or scope.get("method") != "GET":
        return False
    path = str(scope.get("path", ""))
    if _EVENTS.match(path):
        return True
    if _LOGS.match(path):
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        return any(v.lower() in ("1", "true", "yes", "on") for v in query.get("follow", []))
    return False


def client_key(scope: Scope) -> str:
    client = scope.get("client")
    return f"client:{client[0]}" if client else "client:unknown"


class StreamLimit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        slots: StreamSlots,
        key_of: Callable[[Scope], str] = client_key,
        retry_after: int = 5,
    ) -> None:
        self.app = app
        self.slots = slots
        self.key_of = key_of
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_stream(scope):
            await self.app(scope, receive, send)
            return
        key = self.key_of(scope)
        if not self.slots.acquire(key):
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.release(key)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": "too_many_streams",
                "detail": f"at most {self.slots.per_key} event streams and log followers per"
                f" client and {self.slots.total} in all may be open at once; close one or"
                " retry later",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(self.retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
