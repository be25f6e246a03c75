"""`GET /jobs/events`: one stream of the caller's job changes, for job lists (the dashboard).

Each round reads, scoped to the caller's tenant, the jobs whose row may have moved
(`db.jobs.changed_since`: the active ones, the recent ones, those announced and those this
reader last saw active) and sends a `job` event for each one whose status, attempt or
progress differs from what this reader was last sent. A round runs when a change is
announced on Redis (`traindepot.events.CHANGES_CHANNEL`, published after every commit of a
status or a progress snapshot), at most every `ROUND_SECONDS`, and every `IDLE_SECONDS`
anyway: an announcement that was lost (Redis down for a moment) costs latency, never a
change. Without Redis the stream polls. The row is the truth; notices only say "look".
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio
import redis
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import listen, stream_slots
from api.access import Access, AccessDep, Caller
from api.database import Saturated
from api.deps import SettingsDep
from api.responses import errors
from api.schemas import JobChangeOut
from db import jobs
from traindepot import events

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["live"])

ROUND_SECONDS = 0.5  # at most this often per reader, however many changes are announced
IDLE_SECONDS = 3.0  # a quiet stream still looks this often (a lost announcement)
POLL_SECONDS = 1.0  # without Redis
# Jobs created this long before the previous round are read again: a job committed after a
# round began may carry a creation time before it.
RECENT_MARGIN = timedelta(seconds=30)
MAX_REMEMBERED = 10_000
MAX_ANNOUNCED = 1_000


class _Reader:
    def __init__(self, access: Access) -> None:
        self.access = access
        self.sent: OrderedDict[uuid.UUID, tuple[Any, ...]] = OrderedDict()
        self.active: set[uuid.UUID] = set()
        self.since: datetime | None = None

    async def round(self, announced: set[uuid.UUID]) -> list[ServerSentEvent]:
        ids = announced | self.active
        since = self.since - RECENT_MARGIN if self.since is not None else None

        def read(session: Session, caller: Caller) -> tuple[list[JobChangeOut], datetime]:
            now = session.execute(select(func.now())).scalar_one()
            found = jobs.changed_since(
                session=session, tenant=caller.scope, created_after=since, ids=ids
            )
            return [JobChangeOut.of(job) for job in found], now

        found, now = await self.access.run(read)
        self.since = now
        out: list[ServerSentEvent] = []
        seen_ids: set[uuid.UUID] = set()
        for job in found:
            seen_ids.add(job.id)
            mark = (job.status, job.attempt, job.progress)
            if job.status in events.TERMINAL:
                self.active.discard(job.id)
            else:
                self.active.add(job.id)
            if self.sent.get(job.id) == mark:
                continue
            self.sent[job.id] = mark
            self.sent.move_to_end(job.id)
            out.append(ServerSentEvent(data=job.model_dump_json(), event="job"))
        # An active job that no round finds any more was deleted.
        for gone in (self.active & ids) - seen_ids:
            self.active.discard(gone)
            self.sent.pop(gone, None)
            out.append(ServerSentEvent(data=json.dumps({"id": str(gone)}), event="deleted"))
        while len(self.sent) > MAX_REMEMBERED:
            self.sent.popitem(last=False)
        return out


def _announced(message: dict[str, Any] | None, into: set[uuid.UUID]) -> None:
    if message is None or len(into) >= MAX_ANNOUNCED:
        return
    try:
        into.add(uuid.UUID(json.loads(message["data"])["job_id"]))
    except (ValueError, KeyError, TypeError):
        log.debug("ignoring a malformed change notice: %r", message)


async def _stream(reader: _Reader, redis_url: str | None) -> AsyncIterator[ServerSentEvent]:
    pubsub = await listen.subscribe(redis_url, events.CHANGES_CHANNEL)
    try:
        announced: set[uuid.UUID] = set()
        while True:
            try:
                for event in await reader.round(announced):
                    yield event
                announced = set()
            except Saturated:
                pass  # the database is busy: the next round reads the same jobs
            if pubsub is None:
                await anyio.sleep(POLL_SECONDS)
                continue
            try:
                # Wait for an announcement (or the idle timeout), then gather what else is
                # announced within the round's interval.
                with anyio.move_on_after(IDLE_SECONDS):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=IDLE_SECONDS
                    )
                    _announced(message, announced)
                if announced:
                    with anyio.move_on_after(ROUND_SECONDS):
                        while True:
                            message = await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=ROUND_SECONDS
                            )
                            _announced(message, announced)
            except (redis.RedisError, OSError) as exc:
                log.warning("job changes: Redis failed (%s); polling the database", exc)
                await listen.close(pubsub)
                pubsub = None
    finally:
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                await listen.close(pubsub)


@router.get(
    "/events",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `job` (a job's summary, each time its status, "
            "attempt or progress changes) and `deleted`; never ends.",
        },
        **errors(401, s429="Too many open streams for the tenant"),
    },
    response_class=EventSourceResponse,
)
async def job_changes(
    request: Request,
    settings: SettingsDep,
    access: AccessDep,
    ping: Annotated[float, Query(ge=1, le=300, description="Heartbeat interval, seconds")] = 15,
) -> Response:
    """The caller's jobs as they change (an admin's: every tenant's). It starts with the
    active jobs (queued, running, cancelling), then sends a job each time its status,
    attempt or progress changes, new jobs included. For a list: read a page with `GET
    /jobs`, then apply these events to it."""
    # 401 before the stream starts; 429 beyond the tenant's open streams (a stream slot).
    stream_slots.take(request, (await access.who()).tenant)
    return EventSourceResponse(
        _stream(_Reader(access), settings.redis_url),
        ping=ping,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
