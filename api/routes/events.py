"""A job's events as they happen (Server-Sent Events).

`GET /jobs/{id}/events`, in order:
1. Subscribe to the job's Redis channel (and wait for the subscription to be confirmed), so
   nothing published from here on is missed.
2. Read the backlog from Postgres: the job row first, then the points after the reader's
   cursor, in pages (points are committed before the job's terminal status, so a terminal
   row read first means the points read next are all of them).
3. Stream live events from Redis, de-duplicated by point id (ids: traindepot/events.py). A
   live point whose `prev` the reader has not been given (a publish was dropped, a new
   attempt began) sends the reader to the database for the gap instead. Status changes
   are published by whoever commits them (the worker, `POST /jobs/{id}/cancel`, the
   reaper); every few idle seconds the stream also checks the job row, for a change whose
   publish was lost (Redis down for a moment) and a lost end event.
4. On the job's end: a last catch-up from the database, the `end` event, and the stream
   closes. A job already finished is replayed from the database and closed.
With Redis down (or failing mid-stream) the same stream polls the database instead.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import redis
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import listen, stream_slots
from api.access import AccessDep, load_job
from api.database import Saturated, run_db
from api.deps import SettingsDep
from api.responses import JOB_ROUTE, json_errors
from db import jobs, metrics
from db.models import Job
from traindepot import events

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["live"])

IDLE_CHECK_SECONDS = 2.0  # how often a quiet stream looks at the job row
POLL_SECONDS = 0.5  # the database poll interval without Redis


@dataclass
class JobState:
    status: str
    attempt: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, job: Job) -> JobState:
        return cls(str(job.status), job.attempt, job.result, job.error)

    @property
    def version(self) -> int:
        return events.status_version(self.status, self.attempt)

    @property
    def terminal(self) -> bool:
        return self.status in events.TERMINAL


async def read_job(job_id: uuid.UUID) -> JobState | None:
    def read(session: Session) -> JobState | None:
        job = jobs.get(session=session, job_id=job_id)
        return None if job is None else JobState.of(job)

    return await run_db(read)


async def _read_points(job_id: uuid.UUID, after: int, limit: int) -> list[dict[str, Any]]:
    """One keyset page of the backlog (`id > after`, in id order, on the index
    `ix_job_metrics_job_id_id`): a page per database call, so a backlog of any length is
    replayed holding one page, and every call returns its connection."""
    return await run_db(
        lambda s: metrics.points_after(session=s, job_id=job_id, after_id=after, limit=limit)
    )


class _Stream:
    """One reader's stream: its cursor (point id, status version) and how to advance it."""

    def __init__(self, job_id: uuid.UUID, last_event_id: str | None, page: int) -> None:
        self.job_id = job_id
        self.page = page
        self.point, self.version = events.parse_event_id(last_event_id)
        self.attempt = 0
        self.ended = False

    def _id(self) -> str:
        return events.event_id(self.point, self.version)

    def point_event(self, point: dict[str, Any]) -> ServerSentEvent:
        self.point = int(point["id"])
        data: dict[str, Any] = {
            key: point.get(key)
            for key in ("id", "step", "kind", "epoch", "attempt", "values", "progress")
            if key in point
        }
        if "kind" not in data:
            data["kind"] = point.get("type")
        return ServerSentEvent(data=events.encode(data), event=str(data["kind"]), id=self._id())

    def status_event(self, status: str, attempt: int) -> ServerSentEvent | None:
        """The status if it is news to this reader, else None."""
        version = events.status_version(status, attempt)
        self.attempt = max(self.attempt, attempt)
        if version <= self.version:
            return None
        self.version = version
        return ServerSentEvent(
            data=events.encode({"status": status, "attempt": attempt}),
            event="status",
            id=self._id(),
        )

    def end_event(self, job: JobState) -> ServerSentEvent:
        self.version = max(self.version, job.version)
        self.ended = True
        body = {
            "status": job.status,
            "attempt": job.attempt,
            "result": job.result,
            "error": job.error,
        }
        return ServerSentEvent(data=events.encode(body), event="end", id=self._id())

    async def catch_up(self) -> AsyncIterator[ServerSentEvent]:
        """Everything the database has that this reader lacks; the end if the job ended."""
        job = await read_job(self.job_id)
        if job is None:  # deleted while streamed
            self.ended = True
            return
        if not job.terminal and (event := self.status_event(job.status, job.attempt)):
            yield event
        while True:
            page = await _read_points(self.job_id, self.point, self.page)
            for point in page:
                yield self.point_event(point)
            if len(page) < self.page:
                break
        if job.terminal:
            yield self.end_event(job)

    async def on_live(self, event: dict[str, Any]) -> AsyncIterator[ServerSentEvent]:
        kind = event.get("type")
        if kind == "points":
            # One flush's points; the snapshot rides on the newest one, as in the backlog.
            points = [p for p in event.get("points") or [] if isinstance(p, dict)]
            for n, point in enumerate(points, start=1):
                point = {**point, "attempt": event.get("attempt")}
                if n == len(points) and event.get("progress"):
                    point["progress"] = event["progress"]
                async for sse in self.on_live(point):
                    yield sse
        elif kind in events.POINT_TYPES:
            point_id = event.get("id")
            if not isinstance(point_id, int) or point_id <= self.point:
                return  # already delivered (from the backlog, or a duplicate)
            prev = event.get("prev")
            if isinstance(prev, int) and prev <= self.point:
                yield self.point_event(event)
            else:  # a gap: the points between are in the database
                async for caught in self.catch_up():
                    yield caught
        elif kind == "status" and event.get("status") in events.TERMINAL:
            # A terminal status is delivered as the `end` event (with the result), read from
            # the row, as the backlog delivers it: never as a `status` event.
            async for caught in self.catch_up():
                yield caught
        elif kind == "status":
            attempt = event.get("attempt")
            status_event = self.status_event(
                str(event.get("status")), attempt if isinstance(attempt, int) else self.attempt
            )
            if status_event is not None:
                yield status_event
        elif kind == "progress":
            # A snapshot, not history: it carries the reader's current cursor as its id.
            yield ServerSentEvent(
                data=events.encode(event.get("progress") or {}), event="progress", id=self._id()
            )
        elif kind == "end":
            # The row is the truth, and a catch-up first delivers any point whose live
            # publish was lost.
            async for caught in self.catch_up():
                yield caught


async def _event_stream(
    job_id: uuid.UUID, last_event_id: str | None, redis_url: str | None, page: int
) -> AsyncIterator[ServerSentEvent]:
    stream = _Stream(job_id, last_event_id, page)
    pubsub = await listen.subscribe(redis_url, events.channel(job_id))
    try:
        try:
            async for event in stream.catch_up():
                yield event
        except Saturated:
            pass  # the idle check below catches up as soon as the database has a slot
        checked = time.monotonic()
        while not stream.ended:
            message = None
            if pubsub is not None:
                try:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=IDLE_CHECK_SECONDS
                    )
                except (redis.RedisError, OSError) as exc:
                    log.warning("events: Redis failed (%s); polling the database", exc)
                    await listen.close(pubsub)
                    pubsub = None
            else:
                await anyio.sleep(POLL_SECONDS)
            if message is not None:
                async for event in stream.on_live(json.loads(message["data"])):
                    yield event
            elif pubsub is None or time.monotonic() - checked >= IDLE_CHECK_SECONDS:
                checked = time.monotonic()
                try:
                    async for event in stream.catch_up():
                        yield event
                except Saturated:
                    # The database is busy: a background check can wait for the next round
                    # (the stream's cursor only moves with what it delivered).
                    continue
    finally:
        if pubsub is not None:
            with anyio.CancelScope(shield=True):
                await listen.close(pubsub)


@router.get(
    "/{job_id}/events",
    responses={
        **json_errors(*JOB_ROUTE, 429),
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `status`, `train`/`eval`/`summary`/`restart` "
            "points, `progress`, and the final `end`; the stream closes after `end`.",
        },
    },
    response_class=EventSourceResponse,
)
async def job_events(
    job_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    access: AccessDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[
        str | None,
        Query(description="The same as a `Last-Event-ID` header, for clients that cannot set it"),
    ] = None,
    ping: Annotated[float, Query(ge=1, le=300, description="Heartbeat interval, seconds")] = 15,
) -> Response:
    """The job's events as they happen. Every event with an `id` can be resumed from:
    reconnect with `Last-Event-ID: <id>` and the stream goes on after it, nothing lost or
    repeated. Ids are `P-V` (the last point id, the status version; see traindepot/events.py).
    Comment lines (`: ping`) are heartbeats. A reader that already had the `end` event gets
    204 No Content."""
    job = await access.run(lambda s, c: JobState.of(load_job(s, c, job_id)))
    cursor = last_event_id or after
    if job.terminal and events.parse_event_id(cursor)[1] >= job.version:
        # The reader has had the end: 204 tells an EventSource not to reconnect again.
        return Response(status_code=204)
    stream_slots.take(request, (await access.who()).tenant)  # 429 beyond the limits
    return EventSourceResponse(
        _event_stream(job_id, cursor, settings.redis_url, settings.sse_backlog_page),
        ping=ping,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
