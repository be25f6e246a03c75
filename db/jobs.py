"""Every query on the jobs aggregate. Keyword-only; the caller owns the commit.

State changes are single conditional UPDATEs, so two actors (workers, the reaper, the API)
racing on one job cannot both win, and every write of a running attempt is fenced with its
attempt number.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, tuple_, update
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATUSES, Job, JobAttempt, JobStatus


def create(
    *,
    session: Session,
    spec: dict[str, Any],
    tenant: str = "default",
    submitted_by: uuid.UUID | None = None,
) -> Job:
    job = Job(
        id=uuid.uuid4(),
        name=spec["name"],
        tenant=tenant,
        submitted_by=submitted_by,
        status=JobStatus.QUEUED,
        spec=spec,
        queue=spec.get("queue", "default"),
        priority=spec.get("priority", 5),
        attempt=0,
        max_restarts=spec.get("limits", {}).get("max_restarts", 3),
    )
    session.add(job)
    session.flush()
    session.refresh(job)
    return job


def get(*, session: Session, job_id: uuid.UUID, tenant: str | None = None) -> Job | None:
    """The job; with `tenant`, only if it belongs to that tenant (else None, as if it did
    not exist)."""
    job = session.get(Job, job_id)
    if job is None or (tenant is not None and job.tenant != tenant):
        return None
    return job


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID


def list_page(
    *,
    session: Session,
    status: JobStatus | None,
    limit: int,
    cursor: Cursor | None,
    tenant: str | None = None,
) -> list[Job]:
    """Newest first; keyset pagination on (created_at, id). Returns up to `limit` jobs,
    of one tenant when `tenant` is given."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        query = query.where(
            or_(
                Job.created_at < cursor.created_at,
                and_(Job.created_at == cursor.created_at, Job.id < cursor.id),
            )
        )
    return list(session.scalars(query))


def mark_enqueued(*, session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=func.now()))


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


def attempts(*, session: Session, job_id: uuid.UUID) -> list[JobAttempt]:
    """The job's attempts, first to last."""
    return list(
        session.scalars(
            select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
        )
    )


def _end_attempts(
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
) -> bool:
    """Write the terminal status of `attempt`. False if the attempt no longer owns the job."""
    assert status.is_terminal
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(ACTIVE_STATUSES))
        .values(
            status=status,
            result=result,
            error=error,
            finished_at=func.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(Job.id)
    ).first()
    if row is None:
        return False
    _end_attempts(session=session, attempts=[(job_id, attempt)], outcome=str(status))
    return True


def request_cancel(
    *, session: Session, job_id: uuid.UUID, by: uuid.UUID | None = None
) -> Job | None:
    """Cancel a queued job at once; move a running one to `cancelling`. Records when, and
    which key (`by`) asked.

    Returns the updated job, or None when the job is already finished or cancelling.
    """
    asked = {"cancel_requested_at": func.now(), "cancelled_by": by}
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=func.now(), **asked)
        .returning(Job.id)
    ).first()
    if queued is None:
        running = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(status=JobStatus.CANCELLING, **asked)
            .returning(Job.id)
        ).first()
        if running is None:
            return None
    job = session.get(Job, job_id)
    if job is not None:
        session.refresh(job)
    return job


@dataclass(frozen=True)
class Reaped:
    requeued: list[uuid.UUID]
    failed: list[uuid.UUID]
    cancelled: list[uuid.UUID] = field(default_factory=list)


def reap_expired(*, session: Session) -> Reaped:
    """Jobs whose lease expired: back to `queued` while restarts remain, else `failed`.

    A job that was `cancelling` when its worker died ends `cancelled`. The expired attempt
    is recorded as `lost`; `limits.max_restarts` counts lost attempts only (a warm shutdown
    hands its job back without using a restart). Each job is reaped by one reaper: the
    updates are conditional on the expired lease, which the first reaper clears.
    """
    expired = and_(Job.status.in_(ACTIVE_STATUSES), Job.lease_expires_at < func.now())
    ended = dict(lease_owner=None, lease_expires_at=None)
    cancelled = session.execute(
        update(Job)
        .where(expired, Job.status == JobStatus.CANCELLING)
        .values(status=JobStatus.CANCELLED, finished_at=func.now(), **ended)
        .returning(Job.id, Job.attempt)
    ).all()
    lost_before = (
        select(func.count())
        .select_from(JobAttempt)
        .where(JobAttempt.job_id == Job.id, JobAttempt.outcome == "lost")
        .correlate(Job)
        .scalar_subquery()
    )
    failed = session.execute(
        update(Job)
        .where(expired, lost_before >= Job.max_restarts)
        .values(
            status=JobStatus.FAILED,
            finished_at=func.now(),
            error={
                "type": "WorkerLost",
                "message": "the worker running this job stopped renewing its lease and the "
                "job has used all of its restarts",
                "traceback": None,
                "reason": "worker_lost",
            },
            **ended,
        )
        .returning(Job.id, Job.attempt)
    ).all()
    requeued = session.execute(
        update(Job)
        .where(expired)
        .values(status=JobStatus.QUEUED, enqueued_at=None, **ended)
        .returning(Job.id, Job.attempt)
    ).all()
    _end_attempts(
        session=session,
        attempts=[(row[0], row[1]) for row in (*cancelled, *failed, *requeued)],
        outcome="lost",
    )
    return Reaped(
        requeued=[row[0] for row in requeued],
        failed=[row[0] for row in failed],
        cancelled=[row[0] for row in cancelled],
    )


def stale_queued(*, session: Session, older_than_seconds: float) -> list[uuid.UUID]:
    """Queued jobs never enqueued, or enqueued long ago and still waiting: the message may
    be lost (Redis restarted without persistence, enqueue failed after commit)."""
    cutoff = func.now() - timedelta(seconds=older_than_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED,
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff),
                # Leave brand-new rows to the API, which enqueues right after its commit.
                Job.created_at < func.now() - timedelta(seconds=5),
            )
            .order_by(Job.priority.desc(), Job.created_at)
            .limit(100)
        )
    )


def release(
    *, session: Session, job_id: uuid.UUID, attempt: int, result: dict[str, Any] | None = None
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
        )
        return None
    _end_attempts(session=session, attempts=[(job_id, attempt)], outcome="released")
    return session.get(Job, job_id)
