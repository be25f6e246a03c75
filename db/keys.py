"""Queries on API keys. Keyword-only; the caller owns the commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import ApiKey


def create(
    *, session: Session, prefix: str, digest: bytes, tenant: str, name: str, admin: bool
) -> ApiKey:
    key = ApiKey(
        id=uuid.uuid4(), prefix=prefix, digest=digest, tenant=tenant, name=name, admin=admin
    )
    session.add(key)
    session.flush()
    session.refresh(key)
    return key


@dataclass(frozen=True)
class Holder:
    """Who a valid key speaks for."""

    key_id: uuid.UUID
    tenant: str
    admin: bool


def find_active(*, session: Session, digest: bytes) -> Holder | None:
    """Who holds the key with this hash, unless it has been revoked: one indexed lookup of
    three columns (no ORM object: it runs on every request)."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant, ApiKey.admin).where(
            ApiKey.digest == digest, ApiKey.revoked_at.is_(None)
        )
    ).first()
    return None if row is None else Holder(row[0], row[1], row[2])


def list_keys(*, session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke(*, session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke at once (the next request with it is refused); None when there is no such
    key. Revoking twice keeps the first time."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    key = session.get(ApiKey, key_id)
    if key is not None:
        session.refresh(key)
    return key
