"""The tenant's Hub token for one job's training child (docs/architecture.md, "Hub sync"):
decrypted by the worker (traindepot/tenant_secrets.py) only for a job whose spec asks for
`hub`, and only into that child's environment as `HF_TOKEN`. A hub job of a tenant with no
token (or one the server's key cannot decrypt) gets an empty `HF_TOKEN`, so that it never
pushes with a token the worker itself was given; its push is then recorded as failed."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from db import secrets
from traindepot import tenant_secrets
from traindepot.settings import Settings

log = logging.getLogger(__name__)


def child_env(
    session: Session, settings: Settings, tenant: str, spec: dict[str, Any]
) -> dict[str, str]:
    if not spec.get("hub"):
        return {}
    ciphertext = secrets.get(session=session, tenant=tenant, name=tenant_secrets.HF_TOKEN)
    if ciphertext is None:
        return {"HF_TOKEN": ""}
    try:
        return {"HF_TOKEN": tenant_secrets.decrypt(settings, ciphertext)}
    except tenant_secrets.InvalidToken:
        log.error("tenant %s: hf_token was encrypted under another secrets key", tenant)
        return {"HF_TOKEN": ""}
