"""Queries on tenants: their quotas, their active jobs, their idempotency keys.
Keyword-only; the caller owns the commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATUSES, IdempotencyKey, Job, JobStatus, TenantQuota


def lock(*, session: Session, tenant: str) -> None:
    """Serialize this transaction with every other one that locks the same tenant (quota
    checks and idempotency keys): held until commit or rollback."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": f"tenant:{tenant}"})


@dataclass(frozen=True)
class Quota:
    max_active_jobs: int
    max_running_jobs: int


def quota(*, session: Session, tenant: str, default: Quota) -> Quota:
    row = session.get(TenantQuota, tenant)
    if row is None:
        return default
    return Quota(
        max_active_jobs=row.max_active_jobs or default.max_active_jobs,
        max_running_jobs=row.max_running_jobs or default.max_running_jobs,
    )


def set_quota(
    *, session: Session, tenant: str, max_active_jobs: int | None, max_running_jobs: int | None
) -> None:
    values = {"max_active_jobs": max_active_jobs, "max_running_jobs": max_running_jobs}
    session.execute(
        insert(TenantQuota)
        .values(tenant=tenant, **values)
        .on_conflict_do_update(
            index_elements=[TenantQuota.tenant], set_={**values, "updated_at": func.now()}
        )
    )


def active_jobs(*, session: Session, tenant: str) -> int:
    """Queued, running and cancelling jobs of the tenant."""
    statuses = [JobStatus.QUEUED, *ACTIVE_STATUSES]
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant == tenant, Job.status.in_(statuses))
        )
        or 0
    )


def may_start_another(*, session: Session, tenant: str, default: Quota) -> bool:
    """Whether the tenant runs fewer jobs than its `max_running_jobs`. Takes the tenant's
    lock: the caller's claim in the same transaction cannot race another worker's."""
    lock(session=session, tenant=tenant)
    limit = quota(session=session, tenant=tenant, default=default).max_running_jobs
    running = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant == tenant, Job.status.in_(list(ACTIVE_STATUSES)))
    )
    return (running or 0) < limit


# --- Idempotency-Key ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Claimed:
    """This request now holds the key: it must `finish` it with its job or `release` it."""


@dataclass(frozen=True)
class Done:
    """An earlier request with this key and this spec created `job_id`."""

    job_id: uuid.UUID


@dataclass(frozen=True)
class InFlight:
    """An earlier request with this key is still being served."""


@dataclass(frozen=True)
class Mismatch:
    """The key was used with another spec."""


IdempotencyState = Claimed | Done | InFlight | Mismatch


def claim_idempotency_key(
    *,
    session: Session,
    tenant: str,
    key: str,
    request_hash: str,
    ttl: timedelta,
    in_flight_for: timedelta,
) -> IdempotencyState:
    """Take `key` for this request, or say what an earlier request with it did. An expired
    key (older than `ttl`), or one whose request never finished (`in_flight_for`), is
    taken over. Runs under the tenant's lock."""
    lock(session=session, tenant=tenant)
    row = session.get(IdempotencyKey, (tenant, key), populate_existing=True)
    now = session.scalar(select(func.now()))
    assert isinstance(now, datetime)
    if row is not None:
        expired = row.created_at < now - ttl
        abandoned = row.job_id is None and row.created_at < now - in_flight_for
        if not (expired or abandoned):
            if row.request_hash != request_hash:
                return Mismatch()
            return InFlight() if row.job_id is None else Done(row.job_id)
        session.delete(row)
        session.flush()
    session.add(IdempotencyKey(tenant=tenant, key=key, request_hash=request_hash, job_id=None))
    session.flush()
    return Claimed()


def finish_idempotency_key(*, session: Session, tenant: str, key: str, job_id: uuid.UUID) -> None:
    row = session.get(IdempotencyKey, (tenant, key))
    if row is not None:
        row.job_id = job_id


def release_idempotency_key(*, session: Session, tenant: str, key: str) -> None:
    """The request that held `key` failed before it created a job: a retry may use it."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant == tenant,
            IdempotencyKey.key == key,
            IdempotencyKey.job_id.is_(None),
        )
    )


def purge_idempotency_keys(*, session: Session, older_than: timedelta) -> int:
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < func.now() - older_than)
    )
    return int(getattr(result, "rowcount", 0) or 0)
