"""`GET /metrics`: the service in Prometheus' text format (api/telemetry.py says what is
reported and why it is correct with several API processes).

It needs an admin key, sent as a bearer token (Prometheus' `authorization` or
`bearer_token_file` in the scrape config): the series name every tenant's jobs, which no
tenant key may see, and one rule for every data route is simpler to keep than an exception
with a secret of its own. Create a dedicated key: `traindepot keys create --tenant ops
--admin --name prometheus`.
"""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.orm import Session

from api.access import AccessDep, Caller
from api.deps import SettingsDep
from api.responses import json_errors
from api.telemetry import exposition
from db import stats
from traindepot import dispatch

router = APIRouter(tags=["ops"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **json_errors(401, 403, 503),
    },
)
async def prometheus_metrics(access: AccessDep, settings: SettingsDep) -> Response:
    """Jobs by status and queue, queue depth and oldest wait, time-in-queue and duration
    histograms, steps per second of running jobs, metric points written, worker heartbeats,
    and the API's request latency by route. Admin keys only."""

    def read(session: Session, caller: Caller) -> stats.JobStats:
        caller.require_admin()
        return stats.snapshot(session)

    snapshot = await access.run(read)

    def workers() -> list[tuple[str, str, float | None]] | None:
        if not settings.redis_url:
            return None
        try:
            return dispatch.registered_workers(redis_url=settings.redis_url)
        except redis.RedisError:
            return None

    body = exposition(snapshot, await run_in_threadpool(workers))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
