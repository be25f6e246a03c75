"""Issuing API keys: the one place a key is generated and its keyed hash stored, for
`POST /keys`, the `traindepot keys` commands and the first admin key of `serve`/`demo`."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db import keys
from db.models import ApiKey
from db.session import session_scope
from traindepot import apikeys
from traindepot.settings import Settings


def issue(
    *, session: Session, settings: Settings, tenant: str, name: str = "", admin: bool = False
) -> tuple[ApiKey, str]:
    """The stored key (its hash and prefix) and the key itself, to show once."""
    new = apikeys.generate()
    row = keys.create(
        session=session,
        prefix=new.prefix,
        digest=apikeys.digest(new.key, apikeys.server_secret(settings)),
        tenant=tenant,
        name=name,
        admin=admin,
    )
    return row, new.key


def is_active(*, session: Session, settings: Settings, key: str) -> bool:
    digest = apikeys.digest(key, apikeys.server_secret(settings))
    return keys.find_active(session=session, digest=digest) is not None


def ensure_local_admin_key(settings: Settings, *, database_url: str) -> tuple[str, bool]:
    """The admin key kept in `home/admin_key` if it is still valid, else a new one saved
    there (mode 0600). Returns (key, whether it is new: then print it, once)."""
    kept = apikeys.local_admin_key(settings)
    with session_scope(database_url) as session:
        if kept is not None and is_active(session=session, settings=settings, key=kept):
            return kept, False
        _, key = issue(
            session=session, settings=settings, tenant="admin", name="first admin", admin=True
        )
    apikeys.save_local_admin_key(settings, key)
    return key, True
