"""What an attempt's end writes for its job, once the supervisor (worker/supervisor.py) has
decided what the outcome means: a terminal status with the result or the error, or the job
released to the queue (a warm shutdown). Each is fenced by the attempt (`db/attempts.py`),
retried through a database outage (the lease is still renewed meanwhile, so a finished job
is never reaped and run again), and announced after its commit."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from db import attempts, jobs
from db.models import JobStatus
from db.retry import retry_db
from db.session import session_scope
from traindepot import artifacts, events
from traindepot.settings import Settings
from worker.reaper import send

log = logging.getLogger(__name__)


@retry_db(give_up_after_seconds=3600)
def write_terminal(
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    job_dir: Path,
    status: JobStatus,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> None:
    """The attempt's terminal status, with its result or error, if it still owns the job."""
    with session_scope() as session:
        written = attempts.finish(
            session=session,
            job_id=job_id,
            attempt=attempt,
            status=status,
            result=result,
            error=error,
            disk_bytes=artifacts.disk_usage(job_dir),
        )
    if not written:
        log.warning(
            "job %s attempt %s: no longer owns the job; result not written",
            job_id,
            attempt,
        )
        return
    events.publish(
        settings,
        job_id,
        {"type": "end", "status": str(status), "result": result, "error": error},
    )


@retry_db(give_up_after_seconds=3600)
def release(
    settings: Settings,
    job_id: uuid.UUID,
    attempt: int,
    job_dir: Path,
    result: dict[str, Any] | None,
) -> None:
    """The job back to the queue (or `cancelled`, if a cancel came meanwhile), then its
    wake-up."""
    cancelled: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None
    with session_scope() as session:
        job = attempts.release(
            session=session,
            job_id=job_id,
            attempt=attempt,
            result=result,
            disk_bytes=artifacts.disk_usage(job_dir),
        )
        queued = None if job is None else (job.queue, job.priority)
        if job is None:
            # Being cancelled: `release` ended it `cancelled` (if this attempt still
            # owned it).
            current = jobs.get(session=session, job_id=job_id)
            if (
                current is not None
                and current.attempt == attempt
                and current.status == JobStatus.CANCELLED
            ):
                cancelled = (current.result, current.error)
    if cancelled is not None:
        events.publish_status(
            settings,
            job_id,
            status=str(JobStatus.CANCELLED),
            attempt=attempt,
            result=cancelled[0],
            error=cancelled[1],
        )
    if queued is not None:
        # If Redis is down now, the reaper sends it later (enqueued_at stays NULL).
        send(job_id=job_id, queue=queued[0], priority=queued[1])
        # The job keeps this attempt's number until the next claim (status_version).
        events.publish_status(settings, job_id, status=str(JobStatus.QUEUED), attempt=attempt)
