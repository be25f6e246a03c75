"""Tenant secrets (`/tenants/{tenant}/secrets/{name}`): set, listed by name, removed; never
read back (docs/architecture.md, "Hub sync"). A tenant's key may manage its own; an admin
key any tenant's. The value is encrypted before it reaches the database
(traindepot/tenant_secrets.py) and no answer ever holds it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy.orm import Session

from api.access import AccessDep, Caller
from api.deps import SettingsDep
from api.errors import NotFound
from api.responses import errors
from api.tenant_schemas import SecretIn, SecretOut
from db import secrets
from traindepot import apikeys, tenant_secrets

router = APIRouter(tags=["admin"])
_ERRORS = errors(401, 403, 422, 503)

TenantPath = Path(pattern=apikeys.TENANT_PATTERN)
NamePath = Path(pattern="^(" + "|".join(sorted(tenant_secrets.NAMES)) + ")$")


def _own_or_admin(caller: Caller, tenant: str) -> None:
    if tenant != caller.tenant:
        caller.require_admin()


@router.put("/tenants/{tenant}/secrets/{name}", status_code=204, responses=_ERRORS)
async def put_secret(
    body: SecretIn,
    access: AccessDep,
    settings: SettingsDep,
    tenant: Annotated[str, TenantPath],
    name: Annotated[str, NamePath],
) -> Response:
    """Set (or replace) the tenant's secret `name` (`hf_token`: the Hugging Face token its
    jobs with `hub` push with). The answer is empty: the value is never shown again."""
    ciphertext = tenant_secrets.encrypt(settings, body.value.get_secret_value())

    def write(session: Session, caller: Caller) -> None:
        _own_or_admin(caller, tenant)
        secrets.put(session=session, tenant=tenant, name=name, ciphertext=ciphertext)

    await access.run(write, commit=True)
    return Response(status_code=204)


@router.get("/tenants/{tenant}/secrets", response_model=list[SecretOut], responses=_ERRORS)
async def list_secrets(access: AccessDep, tenant: Annotated[str, TenantPath]) -> list[SecretOut]:
    """The names of the tenant's secrets and when each was set; never a value."""

    def read(session: Session, caller: Caller) -> list[SecretOut]:
        _own_or_admin(caller, tenant)
        found = secrets.names(session=session, tenant=tenant)
        return [SecretOut(name=name, updated_at=at) for name, at in found]

    return await access.run(read)


@router.delete(
    "/tenants/{tenant}/secrets/{name}", status_code=204, responses=errors(401, 403, 404, 422, 503)
)
async def delete_secret(
    access: AccessDep, tenant: Annotated[str, TenantPath], name: Annotated[str, NamePath]
) -> Response:
    def remove(session: Session, caller: Caller) -> None:
        _own_or_admin(caller, tenant)
        if not secrets.remove(session=session, tenant=tenant, name=name):
            raise NotFound(f"secret {name} of tenant {tenant}")

    await access.run(remove, commit=True)
    return Response(status_code=204)
