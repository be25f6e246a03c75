"""The background flusher: takes training events off the training thread and writes them.

The training callback only appends to an in-memory buffer (a deque append: no lock wait, no
I/O). A daemon thread wakes every `flush_interval_seconds`, or when the buffer passes half its
bound, and writes what it holds in one transaction: the points upserted into `job_metrics`,
the progress snapshot merged into the job row (one write per batch however many steps it
covers: that is the coalescing). Then it publishes the stored points on Redis `job:{id}`.

Failure handling, by design:
- Postgres down: the batch stays in the buffer and is retried with backoff; nothing is lost.
  The buffer is bounded only by memory then (a point is a few hundred bytes).
- Redis down: live events are dropped (the database has them, and SSE reads its backlog from
  there); a failed publish pauses publishing for a few seconds so training never waits on it.
- The attempt no longer owns the job (reaped, cancelled elsewhere): writes are dropped and
  `fenced` is set, which the callback turns into a stop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError

from db import jobs, metrics
from db.session import session_scope
from traindepot import events

log = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        redis_url: str,
        interval: float = 0.5,
        high_water: int = 1000,
        redis_pause_seconds: float = 5.0,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._interval = interval
        self._high_water = high_water
        self._points: collections.deque[dict[str, Any]] = collections.deque()
        self._progress: dict[str, Any] = {}
        self._wake = threading.Event()
        self._closing = threading.Event()
        self.fenced = False
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._redis_pause = redis_pause_seconds
        self._redis_paused_until = 0.0
        self.stored_points = 0
        self.published_points = 0
        self._thread = threading.Thread(target=self._run, name="traindepot-flusher", daemon=True)
        self._thread.start()

    # --- called from the training thread: never blocks -------------------------------------
    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None:
        self._points.append(
            {
                "step": step,
                "kind": kind,
                "epoch": epoch,
                "values": events.json_safe(values),
                "recorded_at": datetime.now(UTC),
            }
        )
        if len(self._points) >= self._high_water:
            self._wake.set()

    def set_progress(self, progress: dict[str, Any]) -> None:
        # One dict update replaced per step; the flusher takes a copy of the latest.
        self._progress.update(progress)

    # --- lifecycle --------------------------------------------------------------------------
    def close(self, timeout: float = 300.0) -> bool:
        """Flush everything and stop. True if the buffer was fully written."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        self._redis.close()
        return not self._points and not self._thread.is_alive()

    # --- the flusher thread -----------------------------------------------------------------
    def _run(self) -> None:
        backoff = self._interval
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            closing = self._closing.is_set()
            try:
                self._flush_once()
                backoff = self._interval
            except (OperationalError, DBAPIError) as exc:
                backoff = min(backoff * 2, 10.0)
                log.warning("flusher: database unavailable (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                continue
            except Exception:  # never let the thread die silently: log and keep the data
                log.exception("flusher: unexpected error; retrying")
                time.sleep(backoff)
                continue
            if closing and not self._points:
                return

    def _flush_once(self) -> None:
        batch = list(self._points)
        progress = dict(self._progress)
        if not batch and not progress:
            return
        if self.fenced:
            self._discard(len(batch))
            return
        with session_scope() as session:
            if not metrics.attempt_owns_job(
                session=session, job_id=self.job_id, attempt=self.attempt
            ):
                self.fenced = True
                self._discard(len(batch))
                return
            ids = metrics.upsert_points(
                session=session, job_id=self.job_id, attempt=self.attempt, points=batch
            )
            if progress:
                progress["updated_at"] = datetime.now(UTC).isoformat()
                jobs.update_progress(
                    session=session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    progress=events.json_safe(progress),
                )
        # Committed: only now drop them from the buffer (a crash before this re-sends them,
        # and the upsert makes that harmless).
        self._discard(len(batch))
        self.stored_points += len(batch)
        self._publish(batch, ids, progress)

    def _discard(self, count: int) -> None:
        for _ in range(count):
            self._points.popleft()

    def _publish(
        self,
        batch: list[dict[str, Any]],
        ids: dict[tuple[int, str], int],
        progress: dict[str, Any],
    ) -> None:
        if not batch or time.monotonic() < self._redis_paused_until:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for point in metrics.merge_points(batch):
                point_id = ids[(point["step"], point["kind"])]
                pipe.publish(
                    events.channel(self.job_id),
                    events.encode(
                        {
                            "id": point_id,
                            "type": point["kind"],
                            "job_id": str(self.job_id),
                            "attempt": self.attempt,
                            "step": point["step"],
                            "epoch": point["epoch"],
                            "values": point["values"],
                            "progress": progress or None,
                        }
                    ),
                )
            pipe.execute()
            self.published_points += len(batch)
        except redis.RedisError as exc:
            self._redis_paused_until = time.monotonic() + self._redis_pause
            log.warning("flusher: Redis unavailable (%s); live events dropped", exc)
