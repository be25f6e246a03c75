"""Configuration from the environment (prefix ``TRAINDEPOT_``), validated at start-up."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from traindepot.queues import check_queue_name


class SettingsError(RuntimeError):
    """A setting a command needs is missing or unusable: the CLI prints its message and
    exits 2 (traindepot/cli.py)."""


def describe_invalid(exc: ValidationError) -> str:
    """`Settings()`'s validation error as the environment names it: one line per setting,
    `TRAINDEPOT_NAME='value': what is wrong`."""
    lines = []
    for error in exc.errors():
        name = "TRAINDEPOT_" + "_".join(str(part) for part in error["loc"]).upper()
        value = error.get("input")
        shown = f"={value!r}" if isinstance(value, str | int | float) else ""
        lines.append(f"{name}{shown}: {error['msg']}")
    return "invalid settings: " + "; ".join(lines)


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
    # A worker's registration of its devices (worker/capabilities.py) lives this long unless
    # refreshed (every third of it); a worker whose registration runs out without its warm
    # shutdown is lost, and the reaper re-sends the wake-ups it held (worker/lost_workers.py).
    worker_registration_ttl_seconds: float = Field(default=45.0, ge=3)
    # After a cancel or a time limit, the training child gets this long to checkpoint and exit.
    cancel_grace_seconds: float = Field(default=60.0, gt=0)

    # API keys (api/access.py). With `auth` off every caller is an admin of the `default`
    # tenant: for a single user on a trusted machine only.
    auth: bool = True
    # The key of the keyed hash under which API keys are stored. Unset: a random one is
    # created (mode 0600) in `home/secret_key` and read from there; every API process and
    # the `keys` commands must see the same one.
    secret_key: str | None = Field(default=None, min_length=16)
    # The Fernet key tenant secrets (the Hub token) are encrypted under
    # (traindepot/tenant_secrets.py). Unset: one is created (0600) in `home/secrets_key`;
    # the API and every worker must see the same one.
    secrets_key: str | None = Field(default=None, min_length=44, max_length=44)
    # How long an API process trusts a key it has checked (api/keycache.py: only while it
    # hears revocations on Redis; 0 checks every request against the database).
    api_key_cache_seconds: float = Field(default=30.0, ge=0)
    # Per-tenant quotas; an admin can override both per tenant (PUT /tenants/{t}/quota).
    max_active_jobs_per_tenant: int = Field(default=100, gt=0)  # queued + running
    max_running_jobs_per_tenant: int = Field(default=8, gt=0)
    quota_retry_after_seconds: int = Field(default=30, gt=0)
    # A worker woken up while every queued job of its queues waits on its tenant's running
    # limit (or on devices) sends its queue a wake-up again after this long
    # (db/scheduling.py, worker/tasks.py).
    tenant_busy_retry_seconds: float = Field(default=5.0, gt=0)
    # Aging (db/scheduling.py): a queued job's effective priority is its priority plus its
    # wait divided by this, so a job waiting this long ranks with jobs one priority higher
    # submitted now, and nothing starves. Applies to jobs queued (or re-prioritised) after
    # a change.
    aging_seconds_per_priority: float = Field(default=600.0, gt=0)
    # How long an `Idempotency-Key` of POST /jobs is kept, and after how long a request that
    # holds one and never finished (its process died) is treated as abandoned.
    idempotency_ttl_seconds: float = Field(default=24 * 3600, gt=0)
    idempotency_in_flight_seconds: float = Field(default=120, gt=0)

    # The devices this worker owns (worker/devices.py): GPU ids (`traindepot worker --gpus`)
    # or CPU slots (`--slots`); neither: every GPU its probe sees, or one slot.
    worker_gpus: Annotated[list[str], NoDecode] = Field(default_factory=list)
    worker_slots: int | None = Field(default=None, gt=0, le=256)
    # Gangs (db/gangs.py, worker/gang.py): the address this worker advertises to the other
    # nodes of a multi-node job (node 0's hosts the rendezvous on it, on a port chosen per
    # attempt); and how long seats of an incomplete gang are held while small jobs still
    # take the other free devices, after which the gang's eligible workers take no new
    # small job until it starts (the drain).
    advertise_address: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    # Or the network interface whose IPv4 address it advertises instead (worker/network.py),
    # which is then also the one its ranks' collectives use (gloo's and NCCL's socket
    # interface): one setting for a worker with several networks.
    advertise_interface: str | None = Field(default=None, min_length=1, max_length=64)
    gang_hold_seconds: float = Field(default=60.0, ge=0)

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
    # The API's hottest reads (`GET /jobs/{id}`) run on an async pool of their own
    # (api/aio_db.py), opened on first use: its connections per API process. A read waits
    # `api_db_wait_seconds` for one, then 503.
    api_read_pool_size: int = Field(default=4, gt=0)
    # The job documents each API process keeps for `GET /jobs/{id}` (MiB of bodies), each
    # until its job changes (api/job_docs.py: PostgreSQL LISTEN/NOTIFY); 0: every read goes
    # to the database (for a connection pooler that does not forward LISTEN).
    api_job_cache_mib: int = Field(default=64, ge=0)
    # The prepared (tokenised) datasets kept for a sweep's next trials (worker/data_cache.py),
    # on the workers' `home`; the least recently used go beyond it. 0: no cache.
    dataset_cache_mib: int = Field(default=2048, ge=0)
    # How many points an event stream reads per database call while it replays a backlog
    # (api/routes/events.py): the stream holds one such page at a time, whatever the
    # backlog's length.
    sse_backlog_page: int = Field(default=1000, ge=1, le=100_000)

    # Server limits (issue 11): what one spec may ask of a small GPU pool. Each is refused at
    # submit with a 422 naming the field and the limit (traindepot/limits.py).
    max_model_parameters: int = Field(default=1_000_000_000, gt=0)
    # The largest LoRA rank a spec may ask for (`adapter.r`).
    max_adapter_rank: int = Field(default=256, gt=0)
    max_sequence_length: int = Field(default=8192, gt=0)
    # Training examples one job may go through: max_steps x batch x accumulation x devices,
    # or epochs x rows where the row count is known.
    max_train_samples: int = Field(default=10_000_000, gt=0)
    max_train_epochs: float = Field(default=1000.0, gt=0)
    max_dataloader_workers: int = Field(default=4, ge=0)
    max_dataset_file_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Rows of a job's train split once loaded (files and Hub datasets, whose size the API
    # cannot know at submit; `dataset.max_samples` takes fewer), checked by the worker.
    max_dataset_rows: int = Field(default=10_000_000, gt=0)
    # Each image of an image-classification job: its file's (or hub value's) bytes, and its
    # width x height, read from its header before it is decoded (a decompression bomb).
    max_image_bytes: int = Field(default=20 * 1024**2, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # `limits.max_runtime_seconds`: applied when a spec gives none, and its ceiling.
    default_max_runtime_seconds: float = Field(default=24 * 3600.0, gt=0)
    max_runtime_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Budgets of one training child: resident memory (its process tree) and its job
    # directory on disk; over either, the job fails with reason `oom` or `disk`.
    job_memory_bytes: int = Field(default=32 * 1024**3, gt=0)
    job_disk_bytes: int = Field(default=50 * 1024**3, gt=0)
    budget_check_seconds: float = Field(default=0.5, gt=0)
    # The training child's environment is an allowlist (worker/child_env.py); names the
    # operator adds to it (comma-separated).
    child_env_allow: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Weights: pickled (`.bin`) checkpoints and repository code run only where allowed.
    allow_pickle_weights: bool = False
    allow_trust_remote_code: bool = False
    # The queues a spec may name (comma-separated); never a name the broker uses itself.
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    # API: the largest request body, and how many event streams and log followers may be
    # open at once per tenant and in all.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_streams_per_tenant: int = Field(default=20, gt=0)
    max_streams_total: int = Field(default=500, gt=0)

    # Webhooks (docs/architecture.md, "Webhooks"). The sender (`traindepot webhooks`) makes
    # at most `webhook_concurrency` POSTs at once, each given `webhook_timeout_seconds` per
    # step (connect, send, each read) and reading at most `webhook_max_response_bytes` of
    # the answer; a failed attempt is retried after `webhook_backoff_seconds`, doubling up to
    # `webhook_backoff_max_seconds`, with jitter, until `webhook_retry_seconds` after the
    # event, then the delivery is `failed`. It looks for work every `webhook_poll_seconds`
    # and at once when a new event is committed.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=16, gt=0, le=256)
    webhook_max_response_bytes: int = Field(default=4096, ge=0)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_seconds: float = Field(default=3 * 24 * 3600.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    # Finished deliveries (and their events) older than this are purged by the sender.
    webhook_keep_seconds: float = Field(default=14 * 24 * 3600.0, gt=0)
    # Networks a webhook URL may resolve into although they are not public (loopback,
    # private, link-local are refused otherwise), comma-separated: `127.0.0.0/8,10.1.0.0/16`.
    webhook_allowed_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)
    # Subscriptions (`POST /webhooks`) one tenant may have.
    max_webhooks_per_tenant: int = Field(default=50, gt=0)

    # FastAPI's native OpenTelemetry spans and metrics (global providers configured by the
    # operator); off, a request does not pay for asking whether they are.
    opentelemetry: bool = False

    # Warm start (worker/warm.py): training children are forked from a template process
    # that has imported torch, transformers and datasets once; off, each is a fresh Python.
    warm_start: bool = True
    # How long a job waits for a template process that is still importing before it starts
    # cold (waiting is never slower: a cold start does the same imports from the start).
    warm_start_wait_seconds: float = Field(default=30.0, ge=0)

    # The artifact store (traindepot/store.py, docs/architecture.md "The artifact store"):
    # unset, a job's files stay under `home`, which the API and the workers then share; an
    # fsspec URL (`s3://bucket/prefix`, endpoint and credentials from the usual AWS_*
    # variables, or `file:///dir`) holds checkpoints, models and logs for every process.
    artifacts_url: str | None = Field(default=None, min_length=1)
    # A worker's local copies of jobs that no longer run on it (finished jobs, checkpoints
    # downloaded for a resume) are a cache of the store: at most this many bytes of them.
    artifacts_cache_bytes: int = Field(default=20 * 1024**3, ge=0)
    # How long the end of an attempt waits for its uploads (the last checkpoint, the model,
    # the log) while the store is unreachable before the job fails.
    artifacts_upload_deadline_seconds: float = Field(default=600.0, gt=0)
    # `?redirect=true` of the artifact routes: how long a presigned URL is valid.
    artifacts_redirect_seconds: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    # The live training log of a job with a store (a Redis stream, api/routes/logs.py): the
    # most chunks it keeps (each at most 64 KiB; the oldest go first).
    log_stream_max_chunks: int = Field(default=20_000, gt=0)

    # Background flusher of training events (see worker/flusher.py).
    flush_interval_seconds: float = Field(default=1.0, gt=0)
    flush_queue_size: int = Field(default=10_000, gt=0)
    # A point after `flush_interval_seconds` without a write is written at once (false:
    # it waits for the next interval, as before; bench/warm_start.py compares the two).
    flush_leading_edge: bool = True
    # The training child before it trains, and the API process after its warm-up, move the
    # objects of their imports to the collector's permanent generation
    # (traindepot/gc_freeze.py); false: they do not, as before (bench/warm_start.py
    # --before TRAINDEPOT_GC_FREEZE=false compares the two).
    gc_freeze: bool = True

    @field_validator("allowed_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in (part.strip() for part in value.split(",")) if p]
        return value

    @field_validator(
        "queues", "child_env_allow", "webhook_allowed_networks", "worker_gpus", mode="before"
    )
    @classmethod
    def _split_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q for q in (part.strip() for part in value.split(",")) if q]
        return value

    @field_validator("queues")
    @classmethod
    def _no_broker_names(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("configure at least one queue")
        for name in value:
            problem = check_queue_name(name)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("allowed_paths")
    @classmethod
    def _resolve_paths(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]

    @property
    def webhook_lease_seconds(self) -> float:
        """How long a delivery a sender took stays its own: longer than one attempt can
        last, so that only a sender that died leaves it to be taken again."""
        return 3 * self.webhook_timeout_seconds + 5

    @property
    def db_pool_capacity(self) -> int:
        return self.db_pool_size + self.db_max_overflow

    @property
    def api_connections(self) -> int:
        """The most PostgreSQL connections one API process opens: its pool, the async pool
        of its hottest read, and the job cache's LISTEN connection."""
        return self.db_pool_capacity + self.api_read_pool_size + int(self.api_job_cache_mib > 0)

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
            raise SettingsError(
                "TRAINDEPOT_DATABASE_URL is not set"
                " (use `traindepot serve` to run embedded servers)"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise SettingsError(
                "TRAINDEPOT_REDIS_URL is not set (use `traindepot serve` to run embedded servers)"
            )
        return self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
