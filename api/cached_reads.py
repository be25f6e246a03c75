"""`GET /jobs/{id}` answered from the job cache before the framework, when nothing else is
left to decide.

A cached read (api/job_docs.py) is a dict lookup, yet FastAPI's path to it (the exception
and body-limit middlewares, routing, dependency solving, the response's trip back through
each layer) cost as much CPU as a bare FastAPI app's whole request; with 64 pollers on two
cores that is what the p99 was made of (docs/benchmarks.md). This pure ASGI middleware
answers a request only when every condition of a 200 is already known in memory:
- `GET /jobs/<id>` with the id in its canonical form;
- its caller known without a database call (`access.cached_caller`: auth off, or a
  well-formed key that the key cache holds, trusted only while revocations reach it);
- the job's document in the job cache (trusted only while its changes reach it), of the
  caller's tenant or read by an admin.
Anything else (a miss, no key, an unknown key, another tenant's job, another form of the
id) goes on to FastAPI unchanged, which answers it as it always did. The answer is the
route's own: the same body, `content-type` and `content-length`, counted as a cache read
and timed under the route's template by `RequestLatency` (which runs outside this).
"""

from __future__ import annotations

import uuid

from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api import job_docs
from api.access import cached_caller
from api.job_docs import JobDoc

PREFIX = "/jobs/"
_ID_LENGTH = 36


class CachedJobReads:
    def __init__(self, app: ASGIApp, *, route: BaseRoute) -> None:
        self.app = app
        self.route = route  # `GET /jobs/{job_id}`, for the latency's label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = _hit(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if doc is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        job_docs.FROM_CACHE.inc()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(doc.body)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": doc.body})


def _hit(scope: Scope) -> JobDoc | None:
    path: str = scope["path"]
    if len(path) != len(PREFIX) + _ID_LENGTH or not path.startswith(PREFIX):
        return None
    text = path[len(PREFIX) :]
    try:
        job_id = uuid.UUID(text)
    except ValueError:
        return None
    if str(job_id) != text:  # another spelling: FastAPI decides what it means
        return None
    doc = job_docs.cache.get(job_id)
    if doc is None:
        return None
    caller = cached_caller(Headers(scope=scope).get("authorization"))
    if caller is None or caller.scope not in (None, doc.tenant):
        return None
    return doc
