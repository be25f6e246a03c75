"""The scheduler: which queued job a free worker takes next, and where a queued job stands.
Keyword-only; the caller owns the commit (docs/architecture.md, "The scheduler").

The jobs table decides what runs next; a broker message only wakes a worker up. A woken
worker claims the most urgent eligible job of its queues that fits its free devices:

- **Urgency** is priority plus aging: `priority + wait / aging_seconds`. Ordering by it is
  the same as ordering by `effective_queued_at = queued_at - priority * aging_seconds`
  (the effective priority of two jobs differs by the same amount at any moment), a value
  that does not change while the job waits. So it is stored, indexed per queue
  (`ix_jobs_queued_order`), and the claim is an index walk, whatever the queue's length.
  A priority-p job ranks as if it had been queued p * aging_seconds earlier: a low
  priority job overtakes every job submitted more than that much after it, and nothing
  starves.
- **Eligible**: its tenant runs fewer jobs than its `max_running_jobs` (fair share), a
  trial's sweep runs fewer trials than its `max_concurrent_trials` (db/sweep_caps.py), and
  it needs no more devices than the worker has free.
- `FOR UPDATE SKIP LOCKED`: concurrent claims never wait on each other's candidate; the
  conditional claim (`db/attempts.py` `claim`) makes a job run once.
- A requeued job (lost worker, warm shutdown) keeps `queued_at`, so it keeps its place;
  a retry (`reopen`) queues it anew.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from db import attempts, sweep_caps, tenants
from db.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Job,
    JobAttempt,
    JobStatus,
    TenantQuota,
)


def effective_queued_at(queued_at: Any, priority: Any, aging_seconds: float) -> Any:
    """`queued_at` moved earlier by `priority` steps of aging (see the module docstring);
    either may be a column or a value."""
    return queued_at - func.make_interval(0, 0, 0, 0, 0, 0, priority * aging_seconds)


def tenants_at_limit(default_running_limit: int) -> ColumnElement[bool]:
    """Tenants whose running (or cancelling) jobs fill their `max_running_jobs`."""
    running = aliased(Job)
    limit = func.coalesce(
        select(TenantQuota.max_running_jobs)
        .where(TenantQuota.tenant == running.tenant)
        .scalar_subquery(),
        default_running_limit,
    )
    full = (
        select(running.tenant)
        .where(running.status.in_(list(ACTIVE_STATUSES)))
        .group_by(running.tenant)
        .having(func.count() >= limit)
    )
    return Job.tenant.in_(full)


@dataclass(frozen=True)
class Claimed:
    job_id: uuid.UUID
    attempt: int
    gpus: int


@dataclass(frozen=True)
class Claimant:
    """The worker asking for a job, and what it can take."""

    queues: Sequence[str]
    worker: str
    lease_seconds: float
    free_gpus: int
    total_gpus: int
    default_quota: tenants.Quota


def claim_next(*, session: Session, claimant: Claimant) -> Claimed | None:
    """Claim the most urgent eligible queued job of the claimant's `queues` that it (a
    worker with `total_gpus` devices, `free_gpus` of them free) can run: `queued ->
    running`, attempt + 1, leased to its `worker`. None when there is none, or when the
    most urgent one needs more devices than are free (it waits for them: see `_claim`).

    The tenant's running count is checked again under the tenant's lock (held until the
    caller commits), so two workers cannot both take a tenant's last running slot.

    Rows are first taken `SKIP LOCKED`, so that workers never wait on one another's
    candidates. A row is also locked for a moment by the API (marking it enqueued right
    after the wake-up was sent, changing its priority): when the first pass finds nothing,
    a second one waits for such locks instead of skipping them. Postgres then re-reads a
    row another claim took and passes over it (it is no longer queued)."""
    return _claim(session, claimant, skip_locked=True) or _claim(
        session, claimant, skip_locked=False
    )


def _claim(session: Session, claimant: Claimant, *, skip_locked: bool) -> Claimed | None:
    queues, free_gpus, total_gpus = claimant.queues, claimant.free_gpus, claimant.total_gpus
    default_quota = claimant.default_quota
    skipped: list[str] = []
    skipped_sweeps: list[uuid.UUID] = []
    while True:
        query = (
            select(Job.id, Job.tenant, Job.gpus, Job.sweep_id)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.queue.in_(list(queues)),
                Job.gpus <= total_gpus,
                Job.nodes == 1,  # a job of several nodes starts as a gang (db/gangs.py)
                ~tenants_at_limit(default_quota.max_running_jobs),
                # A trial waits while its sweep runs `max_concurrent_trials` (db/sweep_caps.py).
                Job.sweep_id.is_(None) | ~sweep_caps.sweeps_at_limit(),
            )
            .order_by(Job.effective_queued_at, Job.id)
            .limit(1)
            .with_for_update(of=Job, skip_locked=skip_locked)
        )
        if skipped:
            query = query.where(Job.tenant.not_in(skipped))
        if skipped_sweeps:
            query = query.where(Job.sweep_id.is_(None) | Job.sweep_id.not_in(skipped_sweeps))
        candidate = session.execute(query).first()
        if candidate is None:
            return None
        job_id, tenant, gpus, sweep_id = candidate
        if gpus > free_gpus:
            # The most urgent job this worker can run needs more of its devices than are
            # free: none is given to a smaller job meanwhile, or a job that needs all of
            # them would wait for as long as small ones keep coming.
            return None
        if not tenants.may_start_another(session=session, tenant=tenant, default=default_quota):
            skipped.append(tenant)  # another worker took its last slot meanwhile
            continue
        if sweep_id is not None and not sweep_caps.may_start_trial(
            session=session, sweep_id=sweep_id
        ):
            skipped_sweeps.append(sweep_id)  # the same, for the sweep's last slot
            continue
        attempt = attempts.claim(
            session=session,
            job_id=job_id,
            worker=claimant.worker,
            lease_seconds=claimant.lease_seconds,
        )
        if attempt is None:  # cannot happen under the row lock; stay safe
            continue
        return Claimed(job_id=job_id, attempt=attempt, gpus=int(gpus))


def waiting(*, session: Session, queues: Sequence[str]) -> tuple[uuid.UUID, str, int] | None:
    """(id, queue, priority) of the most urgent queued job of `queues`, claimable or not
    (the hint of a wake-up)."""
    row = session.execute(
        select(Job.id, Job.queue, Job.priority)
        .where(Job.status == JobStatus.QUEUED, Job.queue.in_(list(queues)))
        .order_by(Job.effective_queued_at, Job.id)
        .limit(1)
    ).first()
    return None if row is None else (row[0], str(row[1]), int(row[2]))


def position_of(job: type[Job]) -> ColumnElement[int | None]:
    """A column for a statement that selects `job` (the Job entity): 1 + how many queued
    jobs of its queue rank before it when it is queued, else NULL. The order the claim
    serves; a job held back by its tenant's running limit or by devices lets later ones
    pass. A correlated count on `ix_jobs_queued_order`, evaluated for a queued job only, in
    the statement that reads the job (no round trip of its own)."""
    ahead = aliased(Job)
    count = (
        select(func.count())
        .select_from(ahead)
        .where(
            ahead.status == JobStatus.QUEUED,
            ahead.queue == job.queue,
            tuple_(ahead.effective_queued_at, ahead.id) < tuple_(job.effective_queued_at, job.id),
        )
        .scalar_subquery()
    )
    return case((job.status == JobStatus.QUEUED, count + 1), else_=None)


def set_priority(
    *, session: Session, job_id: uuid.UUID, priority: int, aging_seconds: float
) -> Job | None:
    """Change the priority of a queued job (its wait so far still counts). None when the
    job is not queued."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            priority=priority,
            effective_queued_at=effective_queued_at(Job.queued_at, priority, aging_seconds),
        )
        .returning(Job.id)
    ).first()
    return None if row is None else _fresh(session, job_id)


def reopen(*, session: Session, job_id: uuid.UUID, aging_seconds: float) -> Job | None:
    """Queue a failed or cancelled job again under its id, at the back of its priority (a
    retry). Its next claim is a new attempt that resumes from its last whole checkpoint;
    its restart budget starts afresh (lost attempts so far no longer count against it).
    None when the job is not failed or cancelled."""
    lost = (
        select(func.count())
        .select_from(JobAttempt)
        .where(JobAttempt.job_id == Job.id, JobAttempt.outcome == "lost")
        .correlate(Job)
        .scalar_subquery()
    )
    spec_restarts = func.coalesce(Job.spec["limits"]["max_restarts"].as_integer(), 3)
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_([s for s in TERMINAL_STATUSES if s != JobStatus.SUCCEEDED]),
        )
        .values(
            status=JobStatus.QUEUED,
            queued_at=func.now(),
            effective_queued_at=effective_queued_at(func.now(), Job.priority, aging_seconds),
            enqueued_at=None,
            finished_at=None,
            result=None,
            error=None,
            cancel_requested_at=None,
            cancelled_by=None,
            max_restarts=spec_restarts + lost,
        )
        .returning(Job.id)
    ).first()
    return None if row is None else _fresh(session, job_id)


def _fresh(session: Session, job_id: uuid.UUID) -> Job | None:
    job = session.get(Job, job_id)
    if job is not None:
        session.refresh(job)
    return job
