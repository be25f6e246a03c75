"""Configuration from the environment (prefix ``TRAINDEPOT_``), validated at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINDEPOT_", extra="ignore")

    # None means "start the embedded servers" (CLI `serve` / `demo` only).
    database_url: str | None = None
    redis_url: str | None = None
    home: Path = Field(default_factory=lambda: Path.home() / ".traindepot")
    # Roots under which a spec may name local files or model directories.
    # Comma-separated in the environment.
    allowed_paths: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    # Leases: a running attempt renews its lease every `heartbeat_seconds`; a lease not
    # renewed for `lease_seconds` is expired and the reaper requeues the job.
    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    reaper_interval_seconds: float = Field(default=5.0, gt=0)
    # A queued job whose message has not been picked up for this long is enqueued again
    # (the message may have been lost with Redis or with a worker); duplicates are harmless.
    requeue_stale_seconds: float = Field(default=600.0, gt=0)
    # After a cancel or a time limit, the training child gets this long to checkpoint and exit.
    cancel_grace_seconds: float = Field(default=60.0, gt=0)

    # API keys (api/access.py). With `auth` off every caller is an admin of the `default`
    # tenant: for a single user on a trusted machine only.
    auth: bool = True
    # The key of the keyed hash under which API keys are stored. Unset: a random one is
    # created (mode 0600) in `home/secret_key` and read from there; every API process and
    # the `keys` commands must see the same one.
    secret_key: str | None = Field(default=None, min_length=16)
    # Per-tenant quotas; an admin can override both per tenant (PUT /tenants/{t}/quota).
    max_active_jobs_per_tenant: int = Field(default=100, gt=0)  # queued + running
    max_running_jobs_per_tenant: int = Field(default=8, gt=0)
    quota_retry_after_seconds: int = Field(default=30, gt=0)
    # How long an `Idempotency-Key` of POST /jobs is kept, and after how long a request that
    # holds one and never finished (its process died) is treated as abandoned.
    idempotency_ttl_seconds: float = Field(default=24 * 3600, gt=0)
    idempotency_in_flight_seconds: float = Field(default=120, gt=0)

    # Bounds on inline data.
    max_inline_rows: int = Field(default=10_000, gt=0)
    max_inline_bytes: int = Field(default=10 * 1024 * 1024, gt=0)

    # Database connections per process. In the API every request's database work runs in a
    # thread that takes and returns its connection (api/database.py); at most
    # `db_pool_capacity` such threads run at once, so none ever waits on the pool.
    db_pool_size: int = Field(default=10, gt=0)
    db_max_overflow: int = Field(default=10, ge=0)
    # A checkout that still waits this long fails (503 in the API) instead of hanging.
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long an API request waits for one of the `db_pool_capacity` slots before it is
    # answered 503 with Retry-After: saturation is a fast answer, never a stall.
    api_db_wait_seconds: float = Field(default=2.0, gt=0)

    # Background flusher of training events (see worker/flusher.py).
    flush_interval_seconds: float = Field(default=1.0, gt=0)
    flush_queue_size: int = Field(default=10_000, gt=0)

    @field_validator("allowed_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in (part.strip() for part in value.split(",")) if p]
        return value

    @field_validator("allowed_paths")
    @classmethod
    def _resolve_paths(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @property
    def db_pool_capacity(self) -> int:
        return self.db_pool_size + self.db_max_overflow

    @property
    def jobs_dir(self) -> Path:
        """Where job outputs (checkpoints, logs) live; chosen by the server, never by a spec."""
        return self.home / "jobs"

    def job_dir(self, job_id: object) -> Path:
        return self.jobs_dir / str(job_id)

    @property
    def admin_key_file(self) -> Path:
        """Where `serve` and `demo` keep the first admin key (0600) for the local CLI."""
        return self.home / "admin_key"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "TRAINDEPOT_DATABASE_URL is not set"
                " (use `traindepot serve` to run embedded servers)"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError(
                "TRAINDEPOT_REDIS_URL is not set (use `traindepot serve` to run embedded servers)"
            )
        return self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
