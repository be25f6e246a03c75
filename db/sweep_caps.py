"""The running cap of a sweep's trials, which the claim holds (db/scheduling.py): a trial
is not claimed while its sweep runs `max_concurrent_trials` of them, checked again under the
sweep's advisory lock so that two workers cannot both take its last slot. Keyword-only; the
caller owns the commit."""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, func, select, text
from sqlalchemy.orm import Session, aliased

from db.models import ACTIVE_STATUSES, Job, Sweep

# A sweep that may still start or tell trials.
ACTIVE_SWEEP = ("running", "cancelling")


def lock(*, session: Session, sweep_id: uuid.UUID) -> None:
    """Serialize the claims of this sweep's trials (held until commit)."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": f"sweep:{sweep_id}"})


def sweeps_at_limit() -> ColumnElement[bool]:
    """For the claim: the job is a trial of a sweep whose running trials fill its
    `max_concurrent_trials`."""
    running = aliased(Job)
    count = (
        select(func.count())
        .select_from(running)
        .where(running.sweep_id == Sweep.id, running.status.in_(list(ACTIVE_STATUSES)))
        .scalar_subquery()
    )
    full = select(Sweep.id).where(
        Sweep.status.in_(ACTIVE_SWEEP), count >= Sweep.max_concurrent_trials
    )
    return Job.sweep_id.in_(full)


def may_start_trial(*, session: Session, sweep_id: uuid.UUID) -> bool:
    """Whether the sweep runs fewer trials than its cap; under the sweep's lock, so two
    workers cannot both take its last slot."""
    lock(session=session, sweep_id=sweep_id)
    cap = session.scalar(select(Sweep.max_concurrent_trials).where(Sweep.id == sweep_id))
    running = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.sweep_id == sweep_id, Job.status.in_(list(ACTIVE_STATUSES)))
    )
    return cap is None or (running or 0) < cap
