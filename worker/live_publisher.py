"""Publishes a job's stored points live on Redis `job:{id}`, for the SSE readers of
`GET /jobs/{id}/events`. Used by the flusher (worker/flusher.py) after each commit.

What is coalesced, precisely: one Redis message per flush (`{"type": "points", "points":
[...]}`), however many points it carries; a batch of more than `live_limit` points (the
flusher fell behind) is announced by one event, its newest point, marked `"prev": null`,
which tells SSE readers to read the points before it from the database. While Redis fails,
publishes are skipped for `pause_seconds`. Live events are a convenience; the database is
the record.

Each published point carries `prev`: the id of the point this attempt stored just before it
(None for the first one of an attempt). Only one flusher writes a job's points, one
transaction after the other, so a reader that has delivered point `prev` may deliver this
one directly; any other reader has a gap and reads it from the database.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis

from db import metrics
from traindepot import events
from traindepot.redis_client import client

log = logging.getLogger(__name__)


class LivePublisher:
    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        redis_url: str,
        live_limit: int = 2000,
        pause_seconds: float = 5.0,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._channel = events.channel(job_id)
        self._redis = client(redis_url)
        self._live_limit = live_limit
        self._pause = pause_seconds
        self._paused_until = 0.0
        self._last_id: int | None = None  # the last point this attempt stored
        self.published_points = 0
        self.coalesced_publishes = 0

    def publish(
        self,
        points: list[dict[str, Any]],
        ids: dict[tuple[int, str], int],
        progress: dict[str, Any],
    ) -> None:
        """Announce points just committed (with their row ids) and the progress snapshot
        written with them. Never raises: a Redis error pauses publishing instead."""
        stored = sorted(
            ((ids[(p["step"], p["kind"])], p) for p in metrics.merge_points(points)),
            key=lambda item: item[0],
        )
        prev = self._last_id
        if stored:
            self._last_id = stored[-1][0]
        if time.monotonic() < self._paused_until:
            return
        if len(stored) > self._live_limit:
            # Fallen behind: announce the newest point only; readers fetch the rest from the
            # database (prev=None says "there may be a gap before me").
            self.coalesced_publishes += len(stored) - 1
            stored, prev = stored[-1:], None
        message = self._message(stored, prev, progress)
        if message is None:
            return
        # One message per flush, however many points it carries: a publish costs the
        # training process ~25 us of GIL time, which per point is a visible share of a step.
        try:
            # The job list's stream hears of the new progress on the changes channel, in the
            # same round trip.
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.publish(self._channel, events.encode(message))
                pipe.publish(events.CHANGES_CHANNEL, events.change_notice(self.job_id))
                pipe.execute()
            self.published_points += len(stored)
        except redis.RedisError as exc:
            self._paused_until = time.monotonic() + self._pause
            log.warning("flusher: Redis unavailable (%s); live events dropped", exc)

    def _message(
        self, stored: list[tuple[int, dict[str, Any]]], prev: int | None, progress: dict[str, Any]
    ) -> dict[str, Any] | None:
        if not stored:
            if not progress:
                return None
            return {"type": "progress", "job_id": str(self.job_id), "progress": progress}
        batch_points = []
        for point_id, point in stored:
            batch_points.append(
                {
                    "id": point_id,
                    "prev": prev,
                    "type": point["kind"],
                    "step": point["step"],
                    "epoch": point["epoch"],
                    "values": point["values"],
                }
            )
            prev = point_id
        return {
            "type": "points",
            "job_id": str(self.job_id),
            "attempt": self.attempt,
            "points": batch_points,
            "progress": progress or None,
        }
