"""Admin routes: API keys (`/keys`) and tenant quotas (`/tenants/{tenant}/quota`).

Only admin keys may call them (403 otherwise). A new key is returned once, in the response
to `POST /keys`; afterwards only its prefix is ever shown."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api import keycache, keyring
from api.access import AccessDep, Caller
from api.deps import SettingsDep
from api.errors import NotFound
from api.responses import errors
from api.tenant_schemas import KeyIn, KeyOut, NewKeyOut, QuotaIn, QuotaOut
from db import keys, tenants
from traindepot import apikeys
from traindepot.settings import Settings

router = APIRouter(tags=["admin"])
_ERRORS = errors(401, 403, 422, 503)


@router.post("/keys", status_code=201, response_model=NewKeyOut, responses=_ERRORS)
async def create_key(body: KeyIn, access: AccessDep, settings: SettingsDep) -> NewKeyOut:
    """A new key for `tenant`. The response is the only place the key ever appears."""

    def create(session: Session, caller: Caller) -> NewKeyOut:
        caller.require_admin()
        row, key = keyring.issue(
            session=session,
            settings=settings,
            tenant=body.tenant,
            name=body.name,
            admin=body.admin,
        )
        return NewKeyOut(**KeyOut.model_validate(row).model_dump(), key=key)

    return await access.run(create, commit=True)


@router.get("/keys", response_model=list[KeyOut], responses=_ERRORS)
async def list_keys(
    access: AccessDep,
    tenant: Annotated[str | None, Query(pattern=apikeys.TENANT_PATTERN)] = None,
) -> list[KeyOut]:
    """Every key (optionally of one tenant), revoked ones included; never the key itself."""

    def read(session: Session, caller: Caller) -> list[KeyOut]:
        caller.require_admin()
        return [KeyOut.model_validate(k) for k in keys.list_keys(session=session, tenant=tenant)]

    return await access.run(read)


@router.delete(
    "/keys/{key_id}",
    response_model=KeyOut,
    responses={**_ERRORS, **errors(s404="No such key")},
)
async def revoke_key(key_id: uuid.UUID, access: AccessDep, settings: SettingsDep) -> KeyOut:
    """Revoke a key: the next request with it gets 401, in every API process."""

    def revoke(session: Session, caller: Caller) -> KeyOut:
        caller.require_admin()
        row = keys.revoke(session=session, key_id=key_id)
        if row is None:
            raise NotFound(f"key {key_id}")
        return KeyOut.model_validate(row)

    revoked = await access.run(revoke, commit=True)
    # After the commit: every API process drops the key from its cache.
    await run_in_threadpool(keycache.announce_revoked, settings.redis_url, key_id)
    return revoked


TenantPath = Path(pattern=apikeys.TENANT_PATTERN)


def _quota_out(session: Session, settings: Settings, tenant: str) -> QuotaOut:
    default = tenants.Quota(
        settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
    )
    quota = tenants.quota(session=session, tenant=tenant, default=default)
    return QuotaOut(
        tenant=tenant,
        max_active_jobs=quota.max_active_jobs,
        max_running_jobs=quota.max_running_jobs,
        active_jobs=tenants.active_jobs(session=session, tenant=tenant),
    )


@router.get("/tenants/{tenant}/quota", response_model=QuotaOut, responses=_ERRORS)
async def get_quota(access: AccessDep, settings: SettingsDep, tenant: str = TenantPath) -> QuotaOut:
    """The tenant's effective quotas and how many active jobs it has. A tenant key may read
    its own; an admin key any tenant's."""

    def read(session: Session, caller: Caller) -> QuotaOut:
        if tenant != caller.tenant:
            caller.require_admin()
        return _quota_out(session, settings, tenant)

    return await access.run(read)


@router.put("/tenants/{tenant}/quota", response_model=QuotaOut, responses=_ERRORS)
async def set_quota(
    body: QuotaIn, access: AccessDep, settings: SettingsDep, tenant: str = TenantPath
) -> QuotaOut:
    """Override the server's quotas for one tenant (a null field: the server's default)."""

    def write(session: Session, caller: Caller) -> QuotaOut:
        caller.require_admin()
        tenants.set_quota(
            session=session,
            tenant=tenant,
            max_active_jobs=body.max_active_jobs,
            max_running_jobs=body.max_running_jobs,
        )
        return _quota_out(session, settings, tenant)

    return await access.run(write, commit=True)
