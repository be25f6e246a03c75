"""At most N concurrent long-lived responses (event streams, log followers) per tenant and
in all; beyond them the answer is 429 with Retry-After.

`StreamSlots` is the counter. The route takes a slot (`take`) once it knows the caller's
tenant; `StreamLimit`, a pure ASGI middleware around the app, gives it back when the
response is over, however it ends: a slot can never leak with a stream that was never
started or a client that went away.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import TooManyRequests, error_response

__all__ = ["StreamLimit", "StreamSlots", "is_stream", "take"]

RETRY_AFTER_SECONDS = 5

# A job's events, the job list's stream of changes (`/jobs/events`), a sweep's events.
_EVENTS = re.compile(r"^/(?:jobs/(?:[^/]+/)?|sweeps/[^/]+/)events/?$")
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


class _Held:
    """The slots one request took (normally one); given back when its response is over."""

    def __init__(self, slots: StreamSlots) -> None:
        self.slots = slots
        self.keys: list[str] = []

    def take(self, key: str) -> bool:
        if not self.slots.acquire(key):
            return False
        self.keys.append(key)
        return True

    def release(self) -> None:
        while self.keys:
            self.slots.release(self.keys.pop())


class StreamLimit:
    """Pure ASGI middleware, in two steps.

    1. Before the app, with no database work: each credential (the bearer key, else the
       client's address) may have at most `per_key` streaming requests in flight or open,
       and all of them at most `total`; beyond, 429 at once. A key belongs to one tenant, so
       this never refuses what the tenant's limit would allow, and a burst of streams costs
       the database nothing.
    2. The route takes the tenant's slot with `take` once it knows the caller; the
       middleware gives both back when the response is over, however it ends (the stream
       closed, the client went away, the route failed)."""

    def __init__(self, app: ASGIApp, *, slots: StreamSlots) -> None:
        self.app = app
        self.slots = slots
        self.gate = StreamSlots(per_key=slots.per_key, total=slots.total)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_stream(scope):
            await self.app(scope, receive, send)
            return
        credential = _credential(scope)
        if not self.gate.acquire(credential):
            response = error_response(
                "too_many_requests",
                _too_many(self.slots),
                429,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        held = _Held(self.slots)
        scope.setdefault("state", {})["stream_slots"] = held
        try:
            await self.app(scope, receive, send)
        finally:
            held.release()
            self.gate.release(credential)


def _credential(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return "key:" + hashlib.sha256(value).hexdigest()[:32]
    client = scope.get("client")
    return f"client:{client[0] if client else 'unknown'}"


def _too_many(slots: StreamSlots) -> str:
    return (
        f"at most {slots.per_key} event streams and log followers per tenant and"
        f" {slots.total} in all may be open at once (TRAINDEPOT_MAX_STREAMS_PER_TENANT,"
        " TRAINDEPOT_MAX_STREAMS_TOTAL); close one or retry later"
    )


def take(request: Request, key: str) -> None:
    """Take a stream slot for `key` (the caller's tenant) or raise TooManyRequests (429 with
    Retry-After). Without the middleware (an app built without it) there is no limit."""
    held = getattr(request.state, "stream_slots", None)
    if held is None:
        return
    assert isinstance(held, _Held)
    if not held.take(key):
        raise TooManyRequests(_too_many(held.slots), retry_after=RETRY_AFTER_SECONDS)
