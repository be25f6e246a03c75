"""The tables: ``jobs`` (the truth about each job), ``job_metrics`` (its history),
``job_attempts`` (who ran it when), the tenancy tables: ``api_keys``,
``tenant_quotas`` and ``idempotency_keys``, the webhooks: ``webhooks`` (subscriptions)
and the outbox, ``webhook_events`` and ``webhook_deliveries``, and ``sweeps`` (whose trials
are jobs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The statuses are traindepot's (traindepot/statuses.py), re-exported for the queries.
from traindepot.statuses import ACTIVE_STATUSES as ACTIVE_STATUSES
from traindepot.statuses import TERMINAL_STATUSES as TERMINAL_STATUSES
from traindepot.statuses import JobStatus as JobStatus


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    # Every read and write of the API is scoped to the caller's tenant (api/access.py).
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    # The key that submitted it and the one that cancelled it (null with auth off).
    submitted_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    cancelled_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    spec: Mapped[dict[str, Any]]
    queue: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    # Incremented by every claim: attempt N's writes are fenced with `attempt = N`, so a stale
    # attempt that wakes up can never overwrite a newer one.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_restarts: Mapped[int] = mapped_column(Integer, default=3)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Its place in the queue (db/scheduling.py): when it was queued, kept when it is
    # requeued (a lost worker, a warm shutdown), reset by a retry; and the order the claim
    # serves, `queued_at` moved earlier by its priority (effective priority = priority +
    # wait / aging). Each write of `priority` or `queued_at` recomputes it.
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    effective_queued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # The devices it needs (`resources.gpus` of its spec; slots on a CPU-only worker).
    gpus: Mapped[int] = mapped_column(Integer, server_default="1")
    # The workers it spans (`resources.nodes`): `gpus` devices on each, a gang (db/gangs.py).
    nodes: Mapped[int] = mapped_column(Integer, server_default="1")
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Bytes the job's files use on disk (model, checkpoints, log): measured when the job
    # ends and again when `gc` removes some of them; null while it runs.
    disk_bytes: Mapped[int | None] = mapped_column(BigInteger)

    progress: Mapped[dict[str, Any] | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]

    # A trial of a sweep (db/sweeps.py): its sweep and its number in the sweep's study.
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sweeps.id", ondelete="CASCADE")
    )
    trial_number: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued','running','cancelling','succeeded','failed','cancelled')",
            name="jobs_status_valid",
        ),
        # GET /jobs: newest first, optionally by status, keyset-paginated on (created_at, id).
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_status_created_id", "status", "created_at", "id"),
        # A tenant's jobs (GET /jobs with a tenant key), by status too, and its active jobs
        # (quotas: the (tenant, status) prefix of the second).
        Index("ix_jobs_tenant_created_id", "tenant", "created_at", "id"),
        Index("ix_jobs_tenant_status_created_id", "tenant", "status", "created_at", "id"),
        # `traindepot gc`: finished jobs by when they finished.
        Index(
            "ix_jobs_finished_at",
            "finished_at",
            postgresql_where="finished_at IS NOT NULL",
        ),
        # The claim (db/scheduling.py): a queue's queued jobs in effective-priority order.
        Index(
            "ix_jobs_queued_order",
            "queue",
            "effective_queued_at",
            "id",
            postgresql_where="status = 'queued'",
        ),
        # The reaper: active jobs by lease expiry.
        Index(
            "ix_jobs_lease_expires",
            "lease_expires_at",
            postgresql_where="lease_expires_at IS NOT NULL",
        ),
        # A sweep's trials, one job per trial number (and the claim's per-sweep count).
        Index(
            "ix_jobs_sweep_trial",
            "sweep_id",
            "trial_number",
            unique=True,
            postgresql_where="sweep_id IS NOT NULL",
        ),
    )


class JobMetric(Base):
    """One logged point of a job: a training log, an evaluation, or the end-of-train summary.

    Unique per (job, step, kind): a resumed attempt that logs a step again replaces the
    earlier attempt's point, so the history has no duplicates across attempts. The same
    index serves "all points of job X in step order"; (job, id) serves "in write order".
    """

    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[float | None] = mapped_column(Float)
    values: Mapped[dict[str, Any]]
    attempt: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("job_id", "step", "kind", name="uq_job_metrics_job_step_kind"),
        # The event stream's backlog (db/metrics.py `points_after`): "points of job X with
        # id > N, in id order", read in pages without a sort.
        Index("ix_job_metrics_job_id_id", "job_id", "id"),
        # An evaluation metric's series (db/metrics.py `series_filter`): the job's `eval`
        # points in step order, without walking its training points.
        Index("ix_job_metrics_job_kind_step", "job_id", "kind", "step"),
    )


class JobAttempt(Base):
    """One attempt of a job: who ran it and when it started and ended.

    Written by the claim (start), the terminal write or the release (end), and the reaper
    (end of a lost attempt, at the moment it noticed). Attempts of one job never overlap in
    time: an attempt's end is recorded before the next one can be claimed. `lost` attempts
    are what `limits.max_restarts` counts; a warm shutdown's `released` attempt is not a
    failure and does not use up a restart.
    """

    __tablename__ = "job_attempts"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # succeeded | failed | cancelled (terminal write), released (warm shutdown), lost (reaped)
    outcome: Mapped[str | None] = mapped_column(String(16))
    # The checkpoint step this attempt resumed from (None: from the start).
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    # How its training child started: `warm` (forked from the worker's prepared process,
    # worker/warm.py) or `cold` (a fresh Python); None until it started.
    start: Mapped[str | None] = mapped_column(String(8))


class Gang(Base):
    """The gang that forms for a queued multi-node job (db/gangs.py): at most one per queue,
    from the first time an eligible worker looked until the job starts or leaves the queue.
    `formed_at` starts the hold (`gang_hold_seconds`) and orders gangs: a worker seats only
    in the oldest forming gang it is eligible for."""

    __tablename__ = "gangs"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    formed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GangSeat(Base):
    """A worker's seat in the gang of a job of several nodes (db/gangs.py).

    While the job is queued, a seat (`attempt` null) holds `devices` of its worker for the
    gang that forms, with a lease its worker renews; an expired one is dropped. When the
    last seat is taken the job is claimed in the same transaction: every seat gets the
    attempt and its node rank, and the seat of node 0 gives the rendezvous endpoint
    (`address`:`port`). A started seat's lease is its node's heartbeat: the attempt is
    lost on every node once one of its seats expires. Each node records its end on its
    seat (exit code, its first rank error, why it stopped), which node 0 reads.
    """

    __tablename__ = "gang_seats"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    queue: Mapped[str] = mapped_column(String(64))
    worker: Mapped[str] = mapped_column(String(200))
    devices: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempt: Mapped[int | None] = mapped_column(Integer)
    node_rank: Mapped[int | None] = mapped_column(Integer)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None]
    stop_reason: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (
        # One seat per worker in a forming gang; one per node rank in a started attempt.
        Index(
            "ix_gang_seats_forming",
            "job_id",
            "worker",
            unique=True,
            postgresql_where="attempt IS NULL",
        ),
        Index(
            "ix_gang_seats_node",
            "job_id",
            "attempt",
            "node_rank",
            unique=True,
            postgresql_where="attempt IS NOT NULL",
        ),
        Index("ix_gang_seats_queue", "queue", postgresql_where="attempt IS NULL"),
    )


class ApiKey(Base):
    """An API key. The key itself is never stored: only its keyed hash (HMAC-SHA256 with the
    server's secret; a random 256-bit token needs no slow password hash) and its prefix,
    which is shown in lists and in the key itself, so that a leaked key can be identified."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TenantQuota(Base):
    """An admin's override of the server's per-tenant quotas (null: the server default)."""

    __tablename__ = "tenant_quotas"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class TenantSecret(Base):
    """A tenant's secret (`hf_token`), encrypted with the server's key
    (traindepot/tenant_secrets.py): only the training child of that tenant's jobs ever
    gets it back in clear."""

    __tablename__ = "tenant_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class IdempotencyKey(Base):
    """An `Idempotency-Key` of `POST /jobs`, per tenant. `job_id` is null while the first
    request with it is in flight; `request_hash` is the hash of its spec."""

    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (PrimaryKeyConstraint("tenant", "key", name="pk_idempotency_keys"),)


class Webhook(Base):
    """A subscription: `url` hears the `events` of one job (`job_id`, from its spec's
    `notify`) or of every job of `tenant` (`job_id` null, `POST /webhooks`). `secret` signs
    every delivery (Standard Webhooks); it is shown once, when the subscription is made."""

    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # The outbox trigger (migration 0008): a job's own subscriptions, and its tenant's.
        Index("ix_webhooks_job_id", "job_id", postgresql_where="job_id IS NOT NULL"),
        Index("ix_webhooks_tenant", "tenant", postgresql_where="job_id IS NULL"),
    )


class WebhookEvent(Base):
    """One event of the outbox, written by the trigger of migration 0008 in the transaction
    of the status change it names (or by `POST /webhooks/{id}/test`). `data` is the job and
    its attempts as they were at that moment (`{"job": row, "attempts": [rows]}`)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # The sender's purge of old events (`db.webhooks.purge_finished`).
    __table_args__ = (Index("ix_webhook_events_created_at", "created_at"),)


class WebhookDelivery(Base):
    """One event for one subscription: `pending` until a 2xx answer (`delivered`) or until
    the sender gives up (`failed`). Its id is the `webhook-id` of every attempt, so that a
    receiver can drop a duplicate. `next_attempt_at` is when the sender may take it next: a
    sender that takes it pushes it forward by its lease, so a sender killed mid-POST leaves it
    to be taken again."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    event_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_events.id", ondelete="CASCADE")
    )
    webhook_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("webhooks.id", ondelete="CASCADE")
    )
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending','delivered','failed')", name="webhook_deliveries_status_valid"
        ),
        # The sender: due deliveries, and "an earlier event of this job for this subscription
        # is still pending" (order per job and subscription).
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where="status = 'pending'",
        ),
        Index("ix_webhook_deliveries_order", "webhook_id", "job_id", "event_id"),
        # GET /jobs/{id}/deliveries.
        Index("ix_webhook_deliveries_job_event", "job_id", "event_id"),
        # The purge: an event's deliveries (and the cascade of its deletion).
        Index("ix_webhook_deliveries_event_id", "event_id"),
    )


class Sweep(Base):
    """A hyperparameter sweep (db/sweeps.py): a base job spec, a search space and an
    objective; its trials are jobs (`jobs.sweep_id`, `jobs.trial_number`), its study is
    Optuna's, in the `optuna` schema, named `sweep-<id>`. `spec` is the request as
    validated. `max_concurrent_trials` is what the claim holds (db/scheduling.py);
    `deadline_at` is when the time budget ends (no trial is started after it)."""

    __tablename__ = "sweeps"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64), server_default="default")
    submitted_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("api_keys.id", ondelete="SET NULL")
    )
    # running | cancelling (trials still stopping) | succeeded | cancelled
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    max_trials: Mapped[int] = mapped_column(Integer)
    max_concurrent_trials: Mapped[int] = mapped_column(Integer)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(
            "status IN ('running','cancelling','succeeded','cancelled')",
            name="sweeps_status_valid",
        ),
        Index("ix_sweeps_tenant_created", "tenant", "created_at"),
        # The reaper's pass over the sweeps that may need a trial told or asked.
        Index(
            "ix_sweeps_active",
            "status",
            postgresql_where="status IN ('running', 'cancelling')",
        ),
    )
