"""Live events: the Redis channel of a job and the shape of what is published on it.

Shared by the worker (publisher) and the API (SSE subscriber); no torch here.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import TYPE_CHECKING, Any

import redis

from traindepot.redis_client import client
from traindepot.statuses import TERMINAL_STATUSES

if TYPE_CHECKING:
    from traindepot.settings import Settings

log = logging.getLogger(__name__)

# What is published on a job's channel, by `type`: a batch of metric points (`points`, each
# with its own `type`: its kind, one of POINT_TYPES), a status change (`status`), a progress
# snapshot with no new point (`progress`), and the job's end (`end`).
POINT_TYPES = frozenset({"train", "eval", "summary", "restart"})


def channel(job_id: uuid.UUID | str) -> str:
    return f"job:{job_id}"


# One channel for every job's changes, read by the job list's stream (`GET /jobs/events`):
# a notice `{"job_id"}` says "this job's row changed (status or progress); read it". It
# carries no data (the reader reads the row, scoped to its caller), so one channel serves
# every tenant. Published with the job's own events, after the commit they announce.
CHANGES_CHANNEL = "traindepot:jobs"


def change_notice(job_id: uuid.UUID | str) -> str:
    return dumps({"job_id": str(job_id)})


def json_safe(value: Any) -> Any:
    """Non-finite floats become None (JSON and jsonb have no NaN); containers recurse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Compact JSON with non-finite floats as null. The walk that replaces them runs only
    when there is one: this is on the flusher's per-point path."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(json_safe(value), separators=(",", ":"), default=str)


def encode(event: dict[str, Any]) -> str:
    return dumps(event)


def publish(settings: Settings, job_id: uuid.UUID, *events: dict[str, Any]) -> None:
    """Publish `events` on the job's channel, in order, over one connection. Best effort:
    the database is the record; a reader that misses a live event reads it from there."""
    if not settings.redis_url:
        return
    try:
        with client(settings.redis_url).pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(channel(job_id), encode({"job_id": str(job_id), **event}))
            pipe.publish(CHANGES_CHANNEL, change_notice(job_id))
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("job %s: live event not published (%s)", job_id, exc)


def publish_status(
    settings: Settings,
    job_id: uuid.UUID,
    *,
    status: str,
    attempt: int,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """A committed status change: the `status` event, and the `end` event when the status
    is terminal. Call after the commit: a reader that sees the event reads the new row."""
    changed: list[dict[str, Any]] = [{"type": "status", "status": status, "attempt": attempt}]
    if status in TERMINAL:
        changed.append({"type": "end", "status": status, "result": result, "error": error})
    publish(settings, job_id, *changed)


# --- Server-Sent Event ids (GET /jobs/{id}/events) --------------------------------------------
#
# Every event of the stream has the id "P-V", the reader's position in the job's two
# histories:
# - P, the id of the last metric point delivered (0: none). Point ids are `job_metrics` row
#   ids, which grow in write order for a job (db/metrics.py), so "P" says exactly which
#   points the reader has: those with id <= P.
# - V, the status version delivered: statuses are not a history but a state, and V orders
#   them along every legal path (`status_version`). A terminal status has the largest V of
#   its job, and the terminal event, which is the last of a stream, also carries the P of
#   the last point: its id orders after every other event's.
# Reconnecting with `Last-Event-ID: P-V` delivers the points with id > P, in id order, and the
# current status only if its version is > V: nothing lost, nothing repeated. A status that
# came and went while the reader was away (e.g. `cancelling`) collapses into the current one.

_STATUS_RANK = {"running": 1, "cancelling": 2, "queued": 3}
# api/routes/events.py reads this name; it is the one set of traindepot/statuses.py.
TERMINAL = TERMINAL_STATUSES


def status_version(status: str, attempt: int) -> int:
    """Monotonic along `queued(0) -> running(1) -> cancelling(1) -> queued(1) -> running(2)
    ... -> terminal`: 4 * attempt + rank, the terminal rank above all others of its attempt
    (a job requeued after attempt N is `queued` with attempt N, and is next claimed as N+1)."""
    rank = 4 if status in TERMINAL else _STATUS_RANK.get(status, 0)
    return 4 * attempt + rank


def event_id(point_id: int, version: int) -> str:
    return f"{point_id}-{version}"


def parse_event_id(value: str | None) -> tuple[int, int]:
    """(P, V) from a Last-Event-ID; (0, 0) when absent or malformed (start over). A bare
    number is a point id with no status seen (every status version is above 0)."""
    if not value:
        return 0, 0
    point, _, version = value.strip().partition("-")
    try:
        return max(int(point), 0), max(int(version), 0) if version else 0
    except ValueError:
        return 0, 0
