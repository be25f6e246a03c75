"""The Celery task: claim the job row, then supervise one attempt."""

from __future__ import annotations

import logging
import uuid

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy.orm import Session

from db import attempts, jobs, tenants
from db.models import JobStatus
from db.session import session_scope
from traindepot.dispatch import TASK_NAME, enqueue, worker_id
from traindepot.settings import get_settings
from worker import reaper
from worker.celery_app import app
from worker.supervisor import Supervisor, shutting_down

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> None:
    settings = get_settings()
    job_uuid = uuid.UUID(job_id)
    with session_scope() as session:
        deferred = _deferred(session, job_uuid)
        attempt = None
        if deferred is None:
            attempt = attempts.claim(
                session=session,
                job_id=job_uuid,
                worker=worker_id(),
                lease_seconds=settings.lease_seconds,
            )
        job = None if attempt is None else jobs.get(session=session, job_id=job_uuid)
        if job is not None:
            started_at = job.started_at
            limit = (job.spec.get("limits") or {}).get("max_runtime_seconds")
    if deferred is not None:
        # The tenant runs as many jobs as its quota allows: the job stays queued and its
        # message comes back later (the reaper resends it if this send is lost).
        log.info("job %s: its tenant is at its running quota; retrying later", job_id)
        queue, priority = deferred
        enqueue(
            job_id=job_uuid,
            queue=queue,
            priority=priority,
            countdown=settings.tenant_busy_retry_seconds,
        )
        return
    if attempt is None or job is None:
        # The message is acknowledged and dropped: the row says the job is not ours to run.
        log.warning("job %s: not queued (duplicate delivery or cancelled); nothing to do", job_id)
        return
    # A spec stored without a time limit (before the server filled in its default) gets the
    # default; none runs past the server's maximum.
    runtime = settings.default_max_runtime_seconds if limit is None else float(limit)
    Supervisor(
        job_id=job_uuid,
        attempt=attempt,
        settings=settings,
        started_at=started_at,
        max_runtime_seconds=min(runtime, settings.max_runtime_seconds),
    ).run()


def _deferred(session: Session, job_id: uuid.UUID) -> tuple[str, int] | None:
    """(queue, priority) when the job is queued and its tenant already runs its
    `max_running_jobs`: the job must wait. None when the claim may go ahead; the tenant's
    lock is then held until the claim's commit, so two workers cannot both take the last
    running slot."""
    job = jobs.get(session=session, job_id=job_id)
    if job is None or job.status != JobStatus.QUEUED:
        return None  # the claim finds out there is nothing to do
    settings = get_settings()
    default = tenants.Quota(
        settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
    )
    if tenants.may_start_another(session=session, tenant=job.tenant, default=default):
        return None
    return job.queue, job.priority


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reaper(**_: object) -> None:
    reaper.start(get_settings())


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: object) -> None:
    # Warm shutdown: the running job checkpoints, stops and goes back to the queue.
    shutting_down.set()
