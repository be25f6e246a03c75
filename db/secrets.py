"""Queries on tenant secrets (ciphertext only: traindepot/tenant_secrets.py encrypts and
decrypts). Keyword-only; the caller owns the commit."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import TenantSecret


def put(*, session: Session, tenant: str, name: str, ciphertext: bytes) -> None:
    statement = insert(TenantSecret).values(tenant=tenant, name=name, ciphertext=ciphertext)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[TenantSecret.tenant, TenantSecret.name],
            set_={"ciphertext": ciphertext, "updated_at": func.now()},
        )
    )


def get(*, session: Session, tenant: str, name: str) -> bytes | None:
    row = session.get(TenantSecret, (tenant, name))
    return None if row is None else bytes(row.ciphertext)


def names(*, session: Session, tenant: str) -> list[tuple[str, datetime]]:
    rows = session.execute(
        select(TenantSecret.name, TenantSecret.updated_at)
        .where(TenantSecret.tenant == tenant)
        .order_by(TenantSecret.name)
    )
    return [(name, updated) for name, updated in rows]


def remove(*, session: Session, tenant: str, name: str) -> bool:
    result = session.execute(
        delete(TenantSecret).where(TenantSecret.tenant == tenant, TenantSecret.name == name)
    )
    return bool(getattr(result, "rowcount", 0))
