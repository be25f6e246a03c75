"""Supervises one attempt of a job: runs the training child, keeps the lease alive, turns a
cancel or a time limit into a cooperative stop, and writes the terminal status.

The supervisor never imports torch: CUDA lives only in the child, which gets a fresh
context and gives all of its memory back when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from db import jobs
from db.models import JobStatus
from db.session import session_scope
from traindepot import events
from traindepot.settings import Settings
from worker.runner import outcome_path

log = logging.getLogger(__name__)

# Set by the Celery `worker_shutting_down` signal: stop the child at a checkpoint and put
# the job back in the queue instead of failing it.
shutting_down = threading.Event()

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it if the worker dies (SIGKILL
    included), so an orphaned attempt can never train beside the next one."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def publish(settings: Settings, job_id: uuid.UUID, event: dict[str, Any]) -> None:
    """Best effort: the database is the record; a missed live event is read from it later."""
    if not settings.redis_url:
        return
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        with client:
            client.publish(events.channel(job_id), events.encode({"job_id": str(job_id), **event}))
    except redis.RedisError as exc:
        log.warning("job %s: live event not published (%s)", job_id, exc)


_db_retry = retry(
    retry=retry_if_exception_type((OperationalError, DBAPIError)),
    wait=wait_exponential(multiplier=0.5, max=5),
    stop=stop_after_delay(3600),
    reraise=True,
)


class Supervisor:
    def __init__(self, *, job_id: uuid.UUID, attempt: int, settings: Settings) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.settings = settings
        self.job_dir = settings.job_dir(job_id)
        self.stop_reason: str | None = None  # "cancelled" | "timeout" | "shutdown"
        self.lease_lost = False
        self._kill_at: float | None = None
        self.max_runtime_seconds: float | None = None

    def run(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        deadline = self._runtime_deadline()
        publish(
            self.settings,
            self.job_id,
            {"type": "status", "status": "running", "attempt": self.attempt},
        )
        log_path = self.job_dir / "train.log"
        with log_path.open("ab") as log_file:
            log_file.write(
                f"--- attempt {self.attempt} started {datetime.now(UTC).isoformat()} ---\n".encode()
            )
            log_file.flush()
            child = subprocess.Popen(
                [sys.executable, "-m", "worker.runner", str(self.job_id), str(self.attempt)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # terminal signals go to the worker, not the child
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self._watch(child, deadline)
        if self.lease_lost:
            log.warning(
                "job %s attempt %s: lease lost; results left to the newer attempt",
                self.job_id,
                self.attempt,
            )
            return
        self._finish(child.returncode, log_path)

    # --- while the child runs -------------------------------------------------------------
    def _watch(self, child: subprocess.Popen[bytes], deadline: float | None) -> None:
        beat_every = self.settings.heartbeat_seconds
        last_ok = next_beat = time.monotonic()
        while True:
            try:
                child.wait(timeout=min(beat_every, 0.5))
                return
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + beat_every
                status = self._heartbeat()
                if status is not None:
                    last_ok = now
                    if status is JobStatus.CANCELLING:
                        self._stop(child, "cancelled")
                elif self.lease_lost or now - last_ok > self.settings.lease_seconds * 0.8:
                    # Lost, or about to be reaped while the database is unreachable:
                    # stop now so two attempts never train at once.
                    self.lease_lost = True
                    child.kill()
                    child.wait()
                    return
            if deadline is not None and time.time() >= deadline:
                self._stop(child, "timeout")
            if shutting_down.is_set():
                self._stop(child, "shutdown")
            if self._kill_at is not None and now >= self._kill_at:
                log.warning(
                    "job %s: child did not stop within the grace period; killing it", self.job_id
                )
                child.kill()

    def _heartbeat(self) -> JobStatus | None:
        try:
            with session_scope() as session:
                status = jobs.heartbeat(
                    session=session,
                    job_id=self.job_id,
                    attempt=self.attempt,
                    lease_seconds=self.settings.lease_seconds,
                )
        except (OperationalError, DBAPIError) as exc:
            log.warning("job %s: heartbeat failed (%s)", self.job_id, exc)
            return None
        if status is None:
            self.lease_lost = True
        return status

    def _stop(self, child: subprocess.Popen[bytes], reason: str) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self._kill_at = time.monotonic() + self.settings.cancel_grace_seconds
        log.info("job %s: stopping training (%s)", self.job_id, reason)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGUSR1)

    def _runtime_deadline(self) -> float | None:
        with session_scope() as session:
            job = jobs.get(session=session, job_id=self.job_id)
            assert job is not None
            limit = job.spec.get("limits", {}).get("max_runtime_seconds")
            started = job.started_at
        if limit is None or started is None:
            return None
        self.max_runtime_seconds = float(limit)
        return started.timestamp() + self.max_runtime_seconds

    # --- after the child exited -----------------------------------------------------------
    def _finish(self, returncode: int, log_path: Path) -> None:
        outcome = self._read_outcome()
        result = outcome.get("result")
        error: dict[str, Any] | None = outcome.get("error")
        if self.stop_reason == "shutdown":
            self._release()
            return
        if self.stop_reason == "cancelled" or (
            outcome.get("status") == "stopped" and self.stop_reason is None
        ):
            status = JobStatus.CANCELLED
        elif self.stop_reason == "timeout":
            status = JobStatus.FAILED
            error = {
                "type": "TimeoutError",
                "message": "the job ran past limits.max_runtime_seconds="
                f"{self.max_runtime_seconds:g}",
                "traceback": None,
                "reason": "timeout",
            }
        elif outcome.get("status") == "succeeded":
            status = JobStatus.SUCCEEDED
        elif outcome.get("status") == "failed":
            status = JobStatus.FAILED
        else:
            status = JobStatus.FAILED
            how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            error = {
                "type": "TrainingProcessDied",
                "message": f"the training process ended with {how} before reporting a result"
                + (
                    " (killed: possibly out of host memory)"
                    if returncode == -signal.SIGKILL
                    else ""
                ),
                "traceback": _tail(log_path, 60),
                "reason": "internal",
            }
        self._write_terminal(status, result, error)

    @_db_retry
    def _write_terminal(
        self, status: JobStatus, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        with session_scope() as session:
            written = jobs.finish(
                session=session,
                job_id=self.job_id,
                attempt=self.attempt,
                status=status,
                result=result,
                error=error,
            )
        if not written:
            log.warning(
                "job %s attempt %s: no longer owns the job; result not written",
                self.job_id,
                self.attempt,
            )
            return
        publish(
            self.settings,
            self.job_id,
            {"type": "end", "status": str(status), "result": result, "error": error},
        )

    @_db_retry
    def _release(self) -> None:
        from worker.celery_app import enqueue

        with session_scope() as session:
            job = jobs.release(session=session, job_id=self.job_id, attempt=self.attempt)
        if job is not None:
            enqueue(job_id=self.job_id, queue=job.queue, priority=job.priority)
            publish(self.settings, self.job_id, {"type": "status", "status": "queued"})

    def _read_outcome(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(outcome_path(self.job_dir, self.attempt).read_text())
            return data
        except (OSError, ValueError):
            return {}


def _tail(path: Path, lines: int) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        return "\n".join(deque(f.read().decode(errors="replace").splitlines(), maxlen=lines))
