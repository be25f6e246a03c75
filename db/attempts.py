"""The writes of one attempt of a job, each fenced with its attempt number: the claim, the
lease, the progress snapshot, the terminal status and the release. Keyword-only; the caller
owns the commit.

`claim` increments `jobs.attempt`; every later write of the attempt is conditional on
`jobs.attempt` still being its number, so a stale attempt that wakes up after the reaper
handed its job to a newer one writes nothing (docs/architecture.md, "Invariants").
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATUSES, Job, JobAttempt, JobStatus


def attempt_owns_job(*, session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Lock the job row (shared) and check `attempt` is still the current one.

    Held until the caller commits, so the reaper cannot hand the job to a newer attempt
    between this check and the writes that follow it.
    """
    current = session.scalar(select(Job.attempt).where(Job.id == job_id).with_for_update(read=True))
    return current == attempt


def claim(*, session: Session, job_id: uuid.UUID, worker: str, lease_seconds: float) -> int | None:
    """Atomically take a queued job: `queued -> running`, attempt + 1, lease to `worker`.

    Returns the new attempt number, or None when the job was not queued (a duplicate
    delivery, a cancelled job, or another worker was first). The attempt is recorded in
    `job_attempts` in the same transaction.
    """
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            lease_owner=worker,
            lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, func.now()),
        )
        .returning(Job.attempt)
    ).first()
    if row is None:
        return None
    attempt = int(row[0])
    session.execute(insert(JobAttempt).values(job_id=job_id, attempt=attempt, worker=worker))
    return attempt


def record_resume(*, session: Session, job_id: uuid.UUID, attempt: int, step: int | None) -> None:
    """The checkpoint step `attempt` resumed from (None: it started from scratch)."""
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        .values(resumed_from_step=step)
    )


def record_start(*, session: Session, job_id: uuid.UUID, attempt: int, start: str) -> None:
    """How `attempt`'s training child started: `warm` or `cold` (worker/warm.py)."""
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        .values(start=start)
    )


def end_attempts(
    *, session: Session, attempts: Sequence[tuple[uuid.UUID, int]], outcome: str
) -> None:
    """Record the end of attempts (once: a later call leaves an ended attempt alone)."""
    if not attempts:
        return
    session.execute(
        update(JobAttempt)
        .where(
            tuple_(JobAttempt.job_id, JobAttempt.attempt).in_(list(attempts)),
            JobAttempt.ended_at.is_(None),
        )
        .values(ended_at=func.now(), outcome=outcome)
    )


def heartbeat(
    *, session: Session, job_id: uuid.UUID, attempt: int, lease_seconds: float
) -> JobStatus | None:
    """Renew the lease of `attempt`. Returns the job's status, or None if the lease is lost
    (the job was reaped and belongs to a newer attempt, or was finished by someone else)."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(ACTIVE_STATUSES))
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(Job.status)
    ).first()
    return None if row is None else JobStatus(row[0])


def update_progress(
    *, session: Session, job_id: uuid.UUID, attempt: int, progress: dict[str, Any]
) -> None:
    """Merge into the progress snapshot (fenced: a stale attempt writes nothing)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(ACTIVE_STATUSES))
        .values(progress=func.coalesce(Job.progress, func.jsonb_build_object()).op("||")(progress))
    )


def finish(
    *,
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    disk_bytes: int | None = None,
) -> bool:
    """Write the terminal status of `attempt` (with the bytes its files use). False if the
    attempt no longer owns the job."""
    assert status.is_terminal
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(ACTIVE_STATUSES))
        .values(
            status=status,
            result=result,
            error=error,
            disk_bytes=disk_bytes,
            finished_at=func.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(Job.id)
    ).first()
    if row is None:
        return False
    end_attempts(session=session, attempts=[(job_id, attempt)], outcome=str(status))
    return True


def release(
    *,
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    result: dict[str, Any] | None = None,
    disk_bytes: int | None = None,
) -> Job | None:
    """Give a running job back to the queue (the worker is shutting down); the next claim
    resumes it from its last checkpoint. The caller sends the message, then marks it
    enqueued. A job being cancelled ends `cancelled` instead (with `result`, the partial
    TrainOutput). Returns the requeued job, or None."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None, enqueued_at=None)
        .returning(Job.id)
    ).first()
    if row is None:
        finish(
            session=session,
            job_id=job_id,
            attempt=attempt,
            status=JobStatus.CANCELLED,
            result=result,
            disk_bytes=disk_bytes,
        )
        return None
    end_attempts(session=session, attempts=[(job_id, attempt)], outcome="released")
    return session.get(Job, job_id)
