"""The reaper's queries: jobs whose lease expired, and queued jobs whose message may be lost.
Keyword-only; the caller owns the commit (docs/architecture.md, "Invariants").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.attempts import end_attempts
from db.models import ACTIVE_STATUSES, Job, JobAttempt, JobStatus


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
    end_attempts(
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
            .order_by(Job.effective_queued_at, Job.id)
            .limit(100)
        )
    )
