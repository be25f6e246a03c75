"""What `POST /jobs` does between a valid spec and a queued row, under the tenant's lock:
the `Idempotency-Key` (per tenant, kept `idempotency_ttl_seconds`) and the tenant's quota
of active jobs.

Idempotency, after the spec is validated:
- the key is new (or expired, or held by a request that died): this request takes it, and
  the job row and the key's job id are committed together;
- the key names a job created from the same spec: that job, `200`;
- the key's first request is still in flight: `409`; the key was used with another spec:
  `422`. A request that fails before it creates its job gives the key back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.orm import Session

from api import job_docs
from api.access import Access, Caller
from api.database import run_db
from api.errors import Conflict, NotFound, TooManyRequests
from db import jobs, tenants, webhooks
from db.models import Job, Webhook
from traindepot.dispatch import enqueue
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings

log = logging.getLogger(__name__)


def request_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


async def replay(access: Access, settings: Settings, key: str, spec: dict[str, Any]) -> Job | None:
    """The job an earlier request with `key` created (None: this request holds the key now
    and must create the job); raises 409 or 422 as the module docstring says."""

    def claim(session: Session, caller: Caller) -> Job | None:
        state = tenants.claim_idempotency_key(
            session=session,
            tenant=caller.tenant,
            key=key,
            request_hash=request_hash(spec),
            ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
            in_flight_for=timedelta(seconds=settings.idempotency_in_flight_seconds),
        )
        if isinstance(state, tenants.Claimed):
            return None
        if isinstance(state, tenants.InFlight):
            raise Conflict("a request with this Idempotency-Key is still in flight; retry shortly")
        if isinstance(state, tenants.Mismatch):
            raise SpecInvalid(
                [
                    Problem(
                        ("header", "Idempotency-Key"),
                        "this Idempotency-Key was used with a different spec; use a new key",
                        "idempotency_key_reused",
                    )
                ]
            )
        job = jobs.get(session=session, job_id=state.job_id)
        if job is None:  # deleted since
            raise NotFound(f"job {state.job_id}")
        return job

    return await access.run(claim, commit=True)


def check_quota(session: Session, settings: Settings, tenant: str) -> None:
    """Take the tenant's lock (held until commit) and refuse (429) a job over its quota of
    active jobs."""
    tenants.lock(session=session, tenant=tenant)
    default = tenants.Quota(
        settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
    )
    quota = tenants.quota(session=session, tenant=tenant, default=default)
    active = tenants.active_jobs(session=session, tenant=tenant)
    if active >= quota.max_active_jobs:
        raise TooManyRequests(
            f"tenant {tenant!r} has {active} queued or running jobs, its quota is "
            f"{quota.max_active_jobs}; retry when some have finished",
            settings.quota_retry_after_seconds,
        )


async def announce(job: Job) -> None:
    """Wake a worker of the job's queue; call only after the row is committed (a message
    must never name a row a worker cannot see). A broker that is down loses nothing: the
    reaper sends for rows whose `enqueued_at` is still NULL."""
    try:
        await run_in_threadpool(enqueue, job_id=job.id, queue=job.queue, priority=job.priority)
        await run_db(lambda s: jobs.mark_enqueued(session=s, job_id=job.id), commit=True)
    except BrokerError as exc:
        log.warning("job %s stored but not enqueued yet: %s", job.id, exc)


async def announced(job: Job) -> bytes:
    """The committed job's document, read before `announce` wakes a worker: a route that
    queued the job answers with it as queued (attempt 0 for a new job), however fast a
    worker claims it (a warm worker can claim it before a read after the wake-up)."""
    document = await job_docs.document(job.id)
    await announce(job)
    return document


async def create(
    access: Access, settings: Settings, spec: dict[str, Any], idempotency_key: str | None
) -> tuple[Job, list[Webhook]]:
    """The `queued` row, within the tenant's quota, and its own webhook subscriptions
    (`notify.webhooks`); the key (if any) records its id in the same transaction, or is
    given back if the job is refused."""

    def store(session: Session, caller: Caller) -> tuple[Job, list[Webhook]]:
        check_quota(session, settings, caller.tenant)
        job = jobs.create(
            session=session,
            spec=spec,
            tenant=caller.tenant,
            submitted_by=caller.key_id,
            aging_seconds=settings.aging_seconds_per_priority,
        )
        if idempotency_key is not None:
            tenants.finish_idempotency_key(
                session=session, tenant=caller.tenant, key=idempotency_key, job_id=job.id
            )
        # In the job's transaction: its `job.queued` event (written at commit) finds them.
        hooks = [
            webhooks.subscribe(
                session=session,
                tenant=caller.tenant,
                url=target["url"],
                events=target["events"],
                job_id=job.id,
            )
            for target in (spec.get("notify") or {}).get("webhooks", [])
        ]
        return job, hooks

    try:
        return await access.run(store, commit=True)
    except BaseException:
        if idempotency_key is not None:
            await access.run(
                lambda s, c: tenants.release_idempotency_key(
                    session=s, tenant=c.tenant, key=idempotency_key
                ),
                commit=True,
            )
        raise
