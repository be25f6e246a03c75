"""Sweeps: their rows, the per-sweep running cap the claim holds, and the driver that keeps a
sweep's study and its trial jobs in step (docs/architecture.md, "Sweeps"). Keyword-only;
the caller owns the commit.

**The driver** (`advance`) runs under the sweep's row lock, so one process at a time drives
a sweep; it is called after a trial job ends (the worker that ran it), after a submit or a
cancel (the API) and on every reaper pass (any worker), and does whatever is left to do,
so that calling it again, or from a process that died half-way, is harmless:

1. **tell** each trial whose job is terminal and whose study trial is still RUNNING: its
   objective from the job's evaluations (`complete`), `pruned`, or `fail` (failed, or
   cancelled by a user). A trial told already is skipped: never told twice.
2. **materialize** each study trial RUNNING without a job (a driver died between Optuna's
   `ask` and its commit): its job is created from the trial's stored parameters.
3. **ask** new trials while the sweep runs, has trials left and its time budget is not
   spent, keeping `max_concurrent_trials + 1` trials queued or running (one waits ahead,
   so the claim, not the driver, holds the cap) within the tenant's active quota.
4. **end** the sweep once no trial is active and none is left to ask.

A trial's liveness is its job's: its lease and the reaper decide whether it runs, and a job
requeued after its worker died is the same trial, resumed from its checkpoint. Optuna's
heartbeat is not used.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import jobs, studies, tenants, webhooks
from db.models import TERMINAL_STATUSES, Job, JobStatus, Sweep
from db.session import session_scope
from db.sweep_caps import ACTIVE_SWEEP
from traindepot.dispatch import enqueue
from traindepot.settings import Settings
from traindepot.sweeps import SweepSpec, distributions, trial_budget, trial_spec

log = logging.getLogger(__name__)


def create(
    *,
    session: Session,
    sweep: SweepSpec,
    tenant: str,
    submitted_by: uuid.UUID | None,
) -> Sweep:
    row = Sweep(
        id=uuid.uuid4(),
        name=sweep.name,
        tenant=tenant,
        submitted_by=submitted_by,
        status="running",
        spec=sweep.model_dump(mode="json"),
        max_trials=trial_budget(sweep),
        max_concurrent_trials=sweep.max_concurrent_trials,
        deadline_at=(
            None
            if sweep.time_budget_seconds is None
            else func.now() + timedelta(seconds=sweep.time_budget_seconds)
        ),
    )
    session.add(row)
    session.flush()
    session.refresh(row)
    return row


def get(*, session: Session, sweep_id: uuid.UUID, tenant: str | None = None) -> Sweep | None:
    query = select(Sweep).where(Sweep.id == sweep_id)
    if tenant is not None:
        query = query.where(Sweep.tenant == tenant)
    return session.scalars(query).first()


def trial_jobs(*, session: Session, sweep_id: uuid.UUID) -> list[Job]:
    return list(
        session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_number))
    )


def active_ids(*, session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(Sweep.id).where(Sweep.status.in_(ACTIVE_SWEEP))))


def objective_value(*, session: Session, job_id: uuid.UUID, sweep: SweepSpec) -> float | None:
    """The trial's value: its best or last evaluation of the objective's metric."""
    points = jobs.eval_points(session=session, job_id=job_id)
    series = [
        float(values[sweep.objective.metric])
        for _, values in sorted(points.items())
        if isinstance(values.get(sweep.objective.metric), int | float)
    ]
    if not series:
        return None
    if sweep.objective.select == "last":
        return series[-1]
    return min(series) if sweep.objective.direction == "minimize" else max(series)


def pruned(job: Job) -> bool:
    return job.status == JobStatus.CANCELLED and (job.error or {}).get("reason") == "pruned"


@dataclass
class Advanced:
    """What a pass did: jobs to wake a worker for (after the commit), whether anything
    changed (the sweep's stream and webhooks)."""

    created: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)
    changed: bool = False


def _tell(study: Any, number: int, job: Job, session: Session, sweep: SweepSpec) -> Any:
    """Tell the study how trial `number` ended; returns the state told and its value."""
    from optuna.trial import TrialState

    if job.status == JobStatus.SUCCEEDED:
        value = objective_value(session=session, job_id=job.id, sweep=sweep)
        if value is not None:
            study.tell(number, value, skip_if_finished=True)
            return TrialState.COMPLETE, value
    if pruned(job):
        study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        return TrialState.PRUNED, None
    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return TrialState.FAIL, None


def _event(session: Session, row: Sweep, event_type: str, trial: dict[str, Any] | None) -> None:
    """A `sweep.*` webhook event, in this pass's transaction (db/webhooks.py)."""
    summary = {
        "id": str(row.id),
        "name": row.name,
        "tenant": row.tenant,
        "status": row.status,
        "max_trials": row.max_trials,
        "max_concurrent_trials": row.max_concurrent_trials,
    }
    webhooks.add_sweep_event(
        session=session,
        tenant=row.tenant,
        event_type=event_type,
        data={"sweep": summary, "trial": trial},
    )


def _new_trial_job(
    session: Session, settings: Settings, row: Sweep, sweep: SweepSpec, number: int, params: Any
) -> Job:
    job = jobs.create(
        session=session,
        spec=trial_spec(sweep, str(row.id), number, dict(params)),
        tenant=row.tenant,
        submitted_by=row.submitted_by,
        aging_seconds=settings.aging_seconds_per_priority,
    )
    # Trials asked in one pass share `now()`: a microsecond per trial number makes the claim
    # take them in trial order (not by their random ids).
    step = func.make_interval(0, 0, 0, 0, 0, 0, number * 1e-6)
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            sweep_id=row.id,
            trial_number=number,
            queued_at=Job.queued_at + step,
            effective_queued_at=Job.effective_queued_at + step,
        )
    )
    session.refresh(job)
    return job


def advance(
    *, session: Session, sweep_id: uuid.UUID, settings: Settings, wait: bool = True
) -> Advanced:
    """One pass of the driver (module docstring). Optuna's writes are its own (its storage's
    connections); each is idempotent or recovered by the next pass. `wait=False`: do
    nothing when another process holds the sweep (the reaper's passes)."""
    from optuna.trial import TrialState

    done = Advanced()
    row = session.scalars(
        select(Sweep).where(Sweep.id == sweep_id).with_for_update(skip_locked=not wait)
    ).first()
    if row is None:
        return done
    sweep = SweepSpec.model_validate(row.spec)
    study = studies.load(row.id, sweep, asking=False)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    by_number = {j.trial_number: j for j in trial_jobs(session=session, sweep_id=row.id)}

    for number, job in by_number.items():  # 1. tell
        trial = trials.get(number) if number is not None else None
        if (
            trial is not None
            and trial.state == TrialState.RUNNING
            and job.status in TERMINAL_STATUSES
        ):
            state, value = _tell(study, trial.number, job, session, sweep)
            told = {
                "number": trial.number,
                "job_id": str(job.id),
                "job_status": job.status,
                "state": state.name.lower(),
                "value": value,
                "params": dict(trial.params),
            }
            _event(session, row, "sweep.trial_ended", told)
            done.changed = True
    for number, trial in trials.items():  # 2. materialize
        if trial.state == TrialState.RUNNING and number not in by_number:
            if row.status != "running":  # asked, then the sweep was cancelled
                study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            else:
                job = _new_trial_job(session, settings, row, sweep, number, trial.params)
                done.created.append((job.id, job.queue, job.priority))
                by_number[number] = job
            done.changed = True

    active = sum(1 for j in by_number.values() if j.status not in TERMINAL_STATUSES)
    count = len(trials)
    now = session.scalar(select(func.now()))
    budget_spent = row.deadline_at is not None and now is not None and now >= row.deadline_at
    asking = row.status == "running" and not budget_spent
    if asking:  # 3. ask
        quota = tenants.quota(
            session=session,
            tenant=row.tenant,
            default=tenants.Quota(
                settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
            ),
        )
        tenants.lock(session=session, tenant=row.tenant)
        space = distributions(sweep)
        while count < row.max_trials and active < row.max_concurrent_trials + 1:
            if tenants.active_jobs(session=session, tenant=row.tenant) >= quota.max_active_jobs:
                break  # the next pass asks again
            study = studies.load(row.id, sweep)  # a sampler seeded for this ask
            trial = study.ask(space)
            job = _new_trial_job(session, settings, row, sweep, trial.number, trial.params)
            done.created.append((job.id, job.queue, job.priority))
            count += 1
            active += 1
            done.changed = True
    ended = row.status not in ACTIVE_SWEEP
    if not ended and active == 0 and (not asking or count >= row.max_trials):  # 4. end
        row.status = "cancelled" if row.status == "cancelling" else "succeeded"
        row.finished_at = now
        _event(session, row, f"sweep.{row.status}", None)
        done.changed = True
    elif done.changed:
        row.updated_at = now  # type: ignore[assignment]
    return done


def request_cancel(*, session: Session, sweep_id: uuid.UUID, by: uuid.UUID | None) -> list[Job]:
    """Stop asking and cancel every trial still queued or running (under the sweep's row
    lock: no pass of the driver can ask one meanwhile). The sweep ends `cancelled` when
    the driver has told the last of them."""
    row = session.scalars(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).first()
    if row is None or row.status != "running":
        return []
    row.status = "cancelling"
    changed = []
    for job in trial_jobs(session=session, sweep_id=sweep_id):
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            cancelled = jobs.request_cancel(session=session, job_id=job.id, by=by)
            if cancelled is not None:
                changed.append(cancelled)
    return changed


def drive(settings: Settings, sweep_id: uuid.UUID, *, wait: bool = True) -> Advanced:
    """`advance` in a transaction of its own, then the wake-ups of the trials it created
    (after the commit: a message never names a row a worker cannot see). A wake-up that
    cannot be sent leaves `enqueued_at` NULL, and the reaper sends it."""
    with session_scope() as session:
        done = advance(session=session, sweep_id=sweep_id, settings=settings, wait=wait)
    for job_id, queue, priority in done.created:
        try:
            enqueue(job_id=job_id, queue=queue, priority=priority)
        except Exception as exc:
            log.warning("sweep %s: trial job %s not enqueued yet (%s)", sweep_id, job_id, exc)
            continue
        with session_scope() as session:
            jobs.mark_enqueued(session=session, job_id=job_id)
    return done


def study_trials(sweep_id: uuid.UUID) -> list[Any]:
    """The study's trials (Optuna's FrozenTrial), in number order."""
    store = studies.storage()
    try:
        study_id = store.get_study_id_from_name(studies.study_name(sweep_id))
    except KeyError:  # not made yet (the driver's next pass makes it)
        return []
    return sorted(store.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number)
