"""The background flusher: takes training events off the training thread and writes them.

The training callback only appends to an in-memory buffer (a deque append and a dict
update: no lock wait, no I/O, no serialisation). A daemon thread wakes every
`interval` seconds, or as soon as the buffer passes `high_water` points, or (leading edge)
when a point arrives and nothing was written for `interval` seconds: the first step, the
first evaluation, the end, a point after a pause are written and published at once, while
a stream of points is still written once per `interval`. It writes what it holds in one
transaction: the points upserted into `job_metrics` (at most `max_batch` rows
per statement), the progress snapshot (worker/progress.py) merged into the job row. Then it
announces the stored points on Redis (worker/live_publisher.py).

Points are never dropped and never coalesced (but for one (step, kind) logged twice in one
batch, merged exactly as the upsert would merge them). A point leaves the buffer only after
its transaction committed; the final flush in `close()` writes whatever is left. The one
place the training thread waits is `flush_sync`, on a step that saves a checkpoint.

Failure handling:
- Postgres down: the batch stays in the buffer and is retried with the project's backoff
  (db/retry.py), for as long as it takes; nothing is lost.
  The buffer is then bounded only by memory (a point is a few hundred bytes: logging 10
  points a second, an hour of outage holds about 10 MB).
- Redis down: live events are dropped (worker/live_publisher.py).
- The attempt no longer owns the job (reaped, cancelled elsewhere): writes are dropped and
  `fenced` is set, which the callback turns into a stop.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import IO, Any

from db import attempts, metrics
from db.retry import TRANSIENT, retrying_forever
from db.session import session_scope
from traindepot import events
from worker.live_publisher import LivePublisher
from worker.progress import Progress

log = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        redis_url: str,
        interval: float = 1.0,
        high_water: int = 1000,
        max_batch: int = 5000,
        live_limit: int = 2000,
        redis_pause_seconds: float = 5.0,
        database_url: str | None = None,
        log_stream: IO[str] | None = None,
        leading_edge: bool = True,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self._interval = interval
        self._leading_edge = leading_edge
        # Monotonic time the last flush that wrote something began (-inf: none yet).
        self._last_write = -math.inf
        self._high_water = high_water
        self._max_batch = max_batch
        self._database_url = database_url
        # (step, kind, epoch, values, unix time): the training thread appends, this thread pops.
        self._points: collections.deque[tuple[int, str, Any, dict[str, Any], float, int]] = (
            collections.deque()
        )
        self._seq = itertools.count(1)  # numbers the points: log lines, flush_sync
        self._logged_seq = 0
        self._added_seq = 0  # the last point added
        self._done_seq = 0  # the last point committed (or dropped, once fenced)
        self._done = threading.Condition()
        # The training log (GET /jobs/{id}/logs): one JSON line per point, written here, off
        # the training thread.
        self._log_stream: IO[str] | None = log_stream
        self.progress = Progress()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self.fenced = False
        self.live = LivePublisher(
            job_id=job_id,
            attempt=attempt,
            redis_url=redis_url,
            live_limit=live_limit,
            pause_seconds=redis_pause_seconds,
        )
        self.stored_points = 0
        self.failed_flushes = 0
        # CPU time the flusher thread used after its warm-up (set when it ends): what
        # following the job live cost this process beyond the callback's hooks
        # (bench/overhead.py reads it).
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="traindepot-flusher", daemon=True)
        self._thread.start()

    # --- called from the training thread: never blocks -------------------------------------
    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None:
        """Queue a point; `values` must not be mutated afterwards (pass a copy)."""
        seq = next(self._seq)
        self._points.append((step, kind, epoch, values, time.time(), seq))
        self._added_seq = seq
        if len(self._points) >= self._high_water or (
            self._leading_edge and time.monotonic() - self._last_write >= self._interval
        ):
            self._wake.set()

    def set_progress(self, progress: dict[str, Any]) -> None:
        # Coalesced: the flusher writes the latest value of each key, once per flush.
        self.progress.update(progress)

    def watch_state(self, state: Any, *, samples_per_step: int) -> None:
        """Follow a `TrainerState`: see `Progress.watch_state`."""
        self.progress.watch_state(state, samples_per_step=samples_per_step)

    def _write_log_lines(self, batch: list[tuple[Any, ...]]) -> None:
        if self._log_stream is None:
            return
        lines = [
            events.dumps({"step": step, "epoch": epoch, **values}) + "\n"
            for step, _kind, epoch, values, _at, seq in batch
            if seq > self._logged_seq
        ]
        if lines:
            self._logged_seq = batch[-1][5]
            self._log_stream.write("".join(lines))
            self._log_stream.flush()

    def flush_sync(self, timeout: float) -> bool:
        """Block until every point added so far is committed; False after `timeout`.

        For checkpoints only (the callback calls it on a step that saves, before the
        checkpoint is written): a resumed attempt continues after its checkpoint's step, so
        every point up to that step must be in the database first, or a worker killed in
        between would leave a gap in the history. It costs one flush per checkpoint.
        """
        target = self._added_seq
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._done:
            while self._done_seq < target and not self.fenced:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._done.wait(min(remaining, 0.5))
        return True

    def _mark_done(self, batch: list[tuple[Any, ...]]) -> None:
        if batch:
            with self._done:
                self._done_seq = batch[-1][5]
                self._done.notify_all()

    @property
    def pending(self) -> int:
        """Points not yet committed to the database."""
        return len(self._points)

    # --- lifecycle --------------------------------------------------------------------------
    def close(self, timeout: float = 300.0) -> bool:
        """Flush everything and stop. True if the buffer was fully written."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)
        log.info(
            "flusher: %d points stored, %d published live (%d coalesced), %.3f s of CPU",
            self.stored_points,
            self.live.published_points,
            self.live.coalesced_publishes,
            self.cpu_seconds,
        )
        return not self._points and not self._thread.is_alive()

    # --- the flusher thread -----------------------------------------------------------------
    def _run(self) -> None:
        self._warm_up()
        started = time.thread_time()
        try:
            self._loop()
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _warm_up(self) -> None:
        """Connect and check ownership once, before training starts: the connection set-up
        and the first statements' compilation then cost nothing inside the training loop."""
        try:
            with session_scope(self._database_url) as session:
                if not attempts.attempt_owns_job(
                    session=session, job_id=self.job_id, attempt=self.attempt
                ):
                    self.fenced = True
        except TRANSIENT as exc:
            log.warning("flusher: database unavailable at start (%s); will retry", exc)

    def _loop(self) -> None:
        while True:
            if not self._closing.is_set():
                self._wake.wait(self._interval)
                self._wake.clear()
            # The batch stays in the buffer until it is written, however long that takes.
            for attempt in retrying_forever(on_failure=self._flush_failed):
                with attempt:
                    self._flush_once()
            if self._closing.is_set() and not self._points and not self.progress.dirty:
                return

    def _flush_failed(self, error: BaseException) -> None:
        if isinstance(error, TRANSIENT):
            self.failed_flushes += 1
            log.warning("flusher: database unavailable (%s); retrying", error)
        else:  # never let the thread die silently: log and keep the data
            log.error("flusher: unexpected error; retrying", exc_info=error)

    def _flush_once(self) -> None:
        batch = list(itertools.islice(self._points, self._max_batch))
        self._write_log_lines(batch)
        self.progress.fold(next((p[3] for p in reversed(batch) if p[1] == "train"), None))
        version, progress = self.progress.pending()
        if not batch and not progress:
            return
        self._last_write = time.monotonic()
        if self.fenced:
            self._discard(len(batch))
            self._mark_done(batch)
            self.progress.written(version)
            return
        points = [
            {
                "step": step,
                "kind": kind,
                "epoch": epoch,
                "values": values,
                "recorded_at": datetime.fromtimestamp(at, UTC),
            }
            for step, kind, epoch, values, at, _seq in batch
        ]
        with session_scope(self._database_url) as session:
            if not attempts.attempt_owns_job(
                session=session, job_id=self.job_id, attempt=self.attempt
            ):
                self.fenced = True
                self._discard(len(batch))
                self._mark_done(batch)
                return
            ids = metrics.upsert_points(
                session=session, job_id=self.job_id, attempt=self.attempt, points=points
            )
            if progress:
                progress["updated_at"] = datetime.now(UTC).isoformat()
                attempts.update_progress(
                    session=session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    progress=events.json_safe(progress),
                )
        # Committed: only now drop them from the buffer (a crash before this re-sends them,
        # and the upsert makes that harmless).
        self._discard(len(batch))
        self._mark_done(batch)
        self.progress.written(version)
        self.stored_points += len(batch)
        self.live.publish(points, ids, progress)

    def _discard(self, count: int) -> None:
        for _ in range(count):
            self._points.popleft()
