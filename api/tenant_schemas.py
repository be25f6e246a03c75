"""The schemas of the admin's and the tenants' own routes: API keys, tenant secrets and
quotas (api/routes/admin.py, api/routes/secrets.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from traindepot import apikeys

TenantName = Annotated[
    str,
    Field(
        pattern=apikeys.TENANT_PATTERN,
        description=apikeys.TENANT_RULE,
    ),
]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TenantName
    name: str = Field(default="", max_length=200)
    admin: bool = Field(default=False, description="Sees and manages every tenant.")


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # KeyOut.model_validate(api_key_row)

    id: uuid.UUID
    prefix: str = Field(description="The start of the key, shown so a leaked key can be found.")
    tenant: str
    name: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown this once, never stored.")


class SecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: SecretStr = Field(min_length=1, max_length=4096, description="The secret itself.")


class SecretOut(BaseModel):
    name: str
    updated_at: datetime


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_active_jobs: int | None = Field(
        default=None, gt=0, le=1_000_000, description="Queued + running; null: the default."
    )
    max_running_jobs: int | None = Field(
        default=None, gt=0, le=100_000, description="Running at once; null: the default."
    )


class QuotaOut(BaseModel):
    tenant: str
    max_active_jobs: int
    max_running_jobs: int
    active_jobs: int
