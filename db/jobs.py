"""Queries on jobs as the API sees them: create, read, list, cancel, the attempt history.
Keyword-only; the caller owns the commit.

The writes of a running attempt are in ``db.attempts``, the reaper's in ``db.reaping``.
State changes are single conditional UPDATEs, so two actors (workers, the reaper, the API)
racing on one job cannot both win (docs/architecture.md, "Invariants").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, tuple_, update
from sqlalchemy.orm import Session, defer

from db.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Job, JobAttempt, JobMetric, JobStatus
from db.scheduling import effective_queued_at


def create(
    *,
    session: Session,
    spec: dict[str, Any],
    tenant: str = "default",
    submitted_by: uuid.UUID | None = None,
    aging_seconds: float = 600.0,
) -> Job:
    """A `queued` job; its place in the queue is now, moved earlier by its priority
    (db/scheduling.py)."""
    priority = spec.get("priority", 5)
    job = Job(
        id=uuid.uuid4(),
        name=spec["name"],
        tenant=tenant,
        submitted_by=submitted_by,
        status=JobStatus.QUEUED,
        spec=spec,
        queue=spec.get("queue", "default"),
        priority=priority,
        queued_at=func.now(),
        effective_queued_at=effective_queued_at(func.now(), priority, aging_seconds),
        gpus=(spec.get("resources") or {}).get("gpus", 1),
        nodes=(spec.get("resources") or {}).get("nodes", 1),
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


@dataclass(frozen=True)
class Filters:
    """What `GET /jobs` can filter on besides status: the queue, a substring of the name
    (case-insensitive), and a tag (`key`: has it; `key=value`: has it with that value)."""

    queue: str | None = None
    name: str | None = None
    tag: str | None = None

    def apply(self, query: Select[Job]) -> Select[Job]:
        if self.queue is not None:
            query = query.where(Job.queue == self.queue)
        if self.name:
            query = query.where(Job.name.ilike("%" + _like_escape(self.name) + "%", escape="\\"))
        if self.tag:
            key, has_value, value = self.tag.partition("=")
            if has_value:
                query = query.where(Job.spec.contains({"tags": {key: value}}))
            else:
                query = query.where(Job.spec["tags"].has_key(key))
        return query


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_page(
    *,
    session: Session,
    status: JobStatus | None,
    limit: int,
    cursor: Cursor | None,
    tenant: str | None = None,
    filters: Filters | None = None,
) -> list[Job]:
    """Newest first; keyset pagination on (created_at, id). Returns up to `limit` jobs,
    of one tenant when `tenant` is given, without their spec (a list does not show it).

    The cursor is a row comparison, `(created_at, id) < (c, i)`: PostgreSQL makes it the
    index scan's start (an Index Cond on ix_jobs_created_id, or on the tenant's or the
    status' index after their equality columns), so a page 50,000 rows deep reads 51 rows.
    The equivalent `created_at < c OR (created_at = c AND id < i)` is only a Filter: the
    scan read and dropped every row before the page (docs/benchmarks.md)."""
    query = (
        select(Job)
        .options(defer(Job.spec, raiseload=True))  # never loaded one by one later
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
    )
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    if status is not None:
        query = query.where(Job.status == status)
    if filters is not None:
        query = filters.apply(query)
    if cursor is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(cursor.created_at, cursor.id))
    return list(session.scalars(query))


def mark_enqueued(*, session: Session, job_id: uuid.UUID) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=func.now()))


def attempts(*, session: Session, job_id: uuid.UUID) -> list[JobAttempt]:
    """The job's attempts, first to last."""
    return list(
        session.scalars(
            select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
        )
    )


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


def changed_since(
    *,
    session: Session,
    tenant: str | None,
    created_after: datetime | None,
    ids: set[uuid.UUID],
) -> list[Job]:
    """What the job list's stream (`GET /jobs/events`) looks at each round, of one tenant
    when `tenant` is given: the active jobs (queued, running, cancelling: their status or
    progress may have moved), the jobs created after `created_after`, and the jobs `ids`
    (those announced, and those the reader last saw active, which may have ended). Every
    part is served by an index; terminal jobs not named are never read."""
    active = [str(s) for s in (JobStatus.QUEUED, *ACTIVE_STATUSES)]
    wanted: list[ColumnElement[bool]] = [Job.status.in_(active)]
    if created_after is not None:
        wanted.append(Job.created_at > created_after)
    if ids:
        wanted.append(Job.id.in_(ids))
    query = select(Job).where(or_(*wanted)).order_by(Job.created_at, Job.id)
    if tenant is not None:
        query = query.where(Job.tenant == tenant)
    return list(session.scalars(query))


def eval_points(*, session: Session, job_id: uuid.UUID) -> dict[int, dict[str, Any]]:
    """The job's logged evaluations by step (the metrics of each checkpoint's step)."""
    rows = session.execute(
        select(JobMetric.step, JobMetric.values).where(
            JobMetric.job_id == job_id, JobMetric.kind == "eval"
        )
    )
    return {step: values for step, values in rows}


def delete_finished(*, session: Session, job_id: uuid.UUID) -> bool:
    """Delete a finished job's row; its history (`job_metrics`, `job_attempts`, its
    idempotency key) goes with it (ON DELETE CASCADE). False when the job is not finished
    (or gone): an active job is never deleted under its worker."""
    row = session.execute(
        delete(Job).where(Job.id == job_id, Job.status.in_(TERMINAL_STATUSES)).returning(Job.id)
    ).first()
    return row is not None


def finished_before(*, session: Session, cutoff: datetime) -> list[Job]:
    """Finished jobs that ended before `cutoff`, oldest first (`traindepot gc`)."""
    return list(
        session.scalars(
            select(Job)
            .where(
                Job.finished_at.is_not(None),
                Job.finished_at < cutoff,
                Job.status.in_(TERMINAL_STATUSES),
            )
            .order_by(Job.finished_at)
        )
    )


def set_disk_bytes(*, session: Session, job_id: uuid.UUID, disk_bytes: int) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(disk_bytes=disk_bytes))
