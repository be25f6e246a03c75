"""Issuing and revoking API keys from the operator's side (the `keys` commands, and the
first admin key that `serve` and `demo` create), straight on the database."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from traindepot import apikeys
from traindepot.settings import Settings


@dataclass(frozen=True)
class IssuedKey:
    id: uuid.UUID
    prefix: str
    tenant: str
    name: str
    admin: bool
    key: str  # shown once


def issue(
    settings: Settings, *, database_url: str, tenant: str, name: str = "", admin: bool = False
) -> IssuedKey:
    from db import keys
    from db.session import session_scope

    new = apikeys.generate()
    digest = apikeys.digest(new.key, apikeys.server_secret(settings))
    with session_scope(database_url) as session:
        row = keys.create(
            session=session, prefix=new.prefix, digest=digest, tenant=tenant, name=name, admin=admin
        )
        return IssuedKey(row.id, row.prefix, row.tenant, row.name, row.admin, new.key)


def is_active(settings: Settings, *, database_url: str, key: str) -> bool:
    from db import keys
    from db.session import session_scope

    digest = apikeys.digest(key, apikeys.server_secret(settings))
    with session_scope(database_url) as session:
        return keys.find_active(session=session, digest=digest) is not None


def ensure_local_admin_key(settings: Settings, *, database_url: str) -> tuple[str, bool]:
    """The admin key kept in `home/admin_key` if it is still valid, else a new one saved
    there (mode 0600). Returns (key, whether it is new: then print it, once)."""
    kept = apikeys.local_admin_key(settings)
    if kept is not None and is_active(settings, database_url=database_url, key=kept):
        return kept, False
    issued = issue(
        settings, database_url=database_url, tenant="admin", name="first admin", admin=True
    )
    apikeys.save_local_admin_key(settings, issued.key)
    return issued.key, True
