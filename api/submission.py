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
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.access import Access, Caller
from api.errors import Conflict, NotFound, TooManyRequests
from db import jobs, tenants
from db.models import Job
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings


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


async def create(
    access: Access, settings: Settings, spec: dict[str, Any], idempotency_key: str | None
) -> Job:
    """The `queued` row, within the tenant's quota; the key (if any) records its id in the
    same transaction, or is given back if the job is refused."""

    def store(session: Session, caller: Caller) -> Job:
        tenants.lock(session=session, tenant=caller.tenant)
        default = tenants.Quota(
            settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
        )
        quota = tenants.quota(session=session, tenant=caller.tenant, default=default)
        active = tenants.active_jobs(session=session, tenant=caller.tenant)
        if active >= quota.max_active_jobs:
            raise TooManyRequests(
                f"tenant {caller.tenant!r} has {active} queued or running jobs, its quota is "
                f"{quota.max_active_jobs}; retry when some have finished",
                settings.quota_retry_after_seconds,
            )
        job = jobs.create(
            session=session, spec=spec, tenant=caller.tenant, submitted_by=caller.key_id
        )
        if idempotency_key is not None:
            tenants.finish_idempotency_key(
                session=session, tenant=caller.tenant, key=idempotency_key, job_id=job.id
            )
        return job

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
