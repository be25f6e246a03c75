"""Who is calling, and the database work done on their behalf.

Every route but `/healthz`, `/readyz`, the docs and the (data-free) dashboard page takes
`access: AccessDep`. The `Authorization: Bearer <key>` header is checked for its shape at
once (401 before anything else). The key itself is found in the key cache
(api/keycache.py: trusted only while revocations reach this process) or else looked up
inside the route's first database call (`access.run`), in the same thread and session as
the route's own work: one indexed query and no extra thread hop.

`work(session, caller)` scopes itself with `caller`: `caller.scope` is the tenant to filter
by (None for an admin, who sees every tenant). A job of another tenant is reported as not
found, never as forbidden: its existence is not the caller's business. See
docs/architecture.md, "Tenants and keys".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from api.database import run_db
from api.errors import Forbidden, NotFound, Unauthorized
from api.keycache import cache
from db import jobs, keys
from db.keys import Holder
from db.models import Job
from traindepot import apikeys
from traindepot.settings import Settings, get_settings

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    tenant: str
    admin: bool
    key_id: uuid.UUID | None  # None with auth off

    @property
    def scope(self) -> str | None:
        """The tenant to restrict queries to; None (every tenant) for an admin."""
        return None if self.admin else self.tenant

    def require_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this needs an admin key")


ANONYMOUS = Caller(tenant="default", admin=True, key_id=None)


def _caller_of(holder: Holder) -> Caller:
    return Caller(tenant=holder.tenant, admin=holder.admin, key_id=holder.key_id)


def _cached(key: str, settings: Settings) -> Caller | None:
    """The key's caller if the key cache holds it (no database call)."""
    holder = cache.get(apikeys.digest(key, apikeys.server_secret(settings)))
    return None if holder is None else _caller_of(holder)


def _bearer_key(authorization: str | None) -> str | None:
    """`Bearer <key>` -> the key, as FastAPI's HTTPBearer reads the header; None for no
    header or another scheme."""
    scheme, _, key = (authorization or "").partition(" ")
    return key if scheme.lower() == "bearer" and key else None


def cached_caller(authorization: str | None) -> Caller | None:
    """The caller of a request with this `Authorization` header, known without a database
    call (auth off, or a well-formed key in the key cache); None otherwise, and the request
    takes the full path, which answers every other case (api/cached_reads.py)."""
    settings = get_settings()
    if not settings.auth:
        return ANONYMOUS
    key = _bearer_key(authorization)
    if key is None or not apikeys.well_formed(key):
        return None
    return _cached(key, settings)


class Access:
    """The request's credentials and its database work (see the module docstring)."""

    def __init__(self, key: str | None, settings: Settings) -> None:
        self._key = key
        self._settings = settings
        self.caller: Caller | None = None if settings.auth else ANONYMOUS

    def _authenticate(self, session: Session) -> Caller:
        if self.caller is None:
            assert self._key is not None
            digest = apikeys.digest(self._key, apikeys.server_secret(self._settings))
            holder = cache.get(digest) or keys.find_active(session=session, digest=digest)
            if holder is None:
                raise Unauthorized("the API key is unknown or revoked")
            cache.put(digest, holder)
            self.caller = _caller_of(holder)
        return self.caller

    async def run(
        self,
        work: Callable[[Session, Caller], T],
        *,
        commit: bool = False,
        autocommit: bool = False,
    ) -> T:
        """`work(session, caller)` in one database thread, after the caller is known
        (`commit` and `autocommit` as `run_db` takes them)."""
        return await run_db(
            lambda session: work(session, self._authenticate(session)),
            commit=commit,
            autocommit=autocommit,
        )

    async def who(self) -> Caller:
        """The caller, for a route that needs it before (or without) its own work: from
        the key cache when it holds the key (no database call, no thread), else read."""
        if self.caller is None:
            assert self._key is not None
            self.caller = _cached(self._key, self._settings)
        if self.caller is None:
            await self.run(lambda _session, caller: caller)
        assert self.caller is not None
        return self.caller


class _ApiKey(HTTPBearer):
    """The `Authorization: Bearer <key>` header, read into an `Access`. One dependency
    (FastAPI solves each dependency of each request anew, which was a fifth of a cached
    `GET /jobs/{id}`'s CPU with the header, the settings and this as three); a security
    scheme still, so the OpenAPI document names it as before."""

    async def __call__(self, request: HTTPConnection) -> Access:  # type: ignore[override]
        settings = get_settings()
        if not settings.auth:
            return Access(None, settings)
        key = _bearer_key(request.headers.get("Authorization"))
        if key is None:
            raise Unauthorized("send an API key: `Authorization: Bearer <key>`")
        if not apikeys.well_formed(key):
            raise Unauthorized("the API key is malformed")
        return Access(key, settings)


_api_key = _ApiKey(
    auto_error=False,
    scheme_name="HTTPBearer",
    description="An API key: `traindepot keys create --tenant T`, or `POST /keys` as an admin.",
)
AccessDep = Annotated[Access, Depends(_api_key)]


def load_job(session: Session, caller: Caller, job_id: uuid.UUID) -> Job:
    """The job if the caller may see it; 404 otherwise (another tenant's job included)."""
    job = jobs.get(session=session, job_id=job_id, tenant=caller.scope)
    if job is None:
        raise NotFound(f"job {job_id}")
    return job
