"""The Celery task: claim the job row, then supervise one attempt."""

from __future__ import annotations

import logging
import uuid

from celery.signals import worker_ready, worker_shutting_down

from db import attempts, jobs
from db.session import session_scope
from traindepot.dispatch import TASK_NAME, worker_id
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
        attempt = attempts.claim(
            session=session,
            job_id=job_uuid,
            worker=worker_id(),
            lease_seconds=settings.lease_seconds,
        )
        if attempt is None:
            job = None
        else:
            job = jobs.get(session=session, job_id=job_uuid)
            assert job is not None
            started_at = job.started_at
            limit = (job.spec.get("limits") or {}).get("max_runtime_seconds")
    if attempt is None or job is None:
        # The message is acknowledged and dropped: the row says the job is not ours to run.
        log.warning("job %s: not queued (duplicate delivery or cancelled); nothing to do", job_id)
        return
    Supervisor(
        job_id=job_uuid,
        attempt=attempt,
        settings=settings,
        started_at=started_at,
        max_runtime_seconds=None if limit is None else float(limit),
    ).run()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reaper(**_: object) -> None:
    reaper.start(get_settings())


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: object) -> None:
    # Warm shutdown: the running job checkpoints, stops and goes back to the queue.
    shutting_down.set()
