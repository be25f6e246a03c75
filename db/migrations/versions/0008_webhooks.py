"""Webhooks: subscriptions (`webhooks`), the outbox (`webhook_events`, `webhook_deliveries`)
and the trigger that writes the outbox in the transaction of every status change of a job

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The outbox is written by the database itself, so that every path that changes a job's
# status (the API's insert and cancel, a worker's claim, finish and release, the reaper, and
# any path added later) writes its events in its own transaction, with no code of its own.
# A deferred constraint trigger runs at commit: it sees the transaction's final state (the
# claim's `job_attempts` row, a job's own subscriptions inserted after the job) and snapshots
# the job and its attempts as they are at that moment, so that a late delivery never shows a
# later state. `kind` tells a requeue (running or cancelling -> queued) from the first
# `queued`; `cancelling` is no event. No subscription: no event row at all.
_FUNCTION = """
CREATE FUNCTION traindepot_job_webhook_events() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    new_event bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status THEN
        RETURN NULL;
    END IF;
    kind := CASE
        WHEN TG_OP = 'UPDATE' AND NEW.status = 'queued' THEN 'job.requeued'
        WHEN NEW.status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')
            THEN 'job.' || NEW.status
    END;
    IF kind IS NULL OR NOT EXISTS (
        SELECT 1 FROM webhooks w
        WHERE (w.job_id = NEW.id OR (w.job_id IS NULL AND w.tenant = NEW.tenant))
          AND kind = ANY (w.events)
    ) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_events (job_id, type, data)
    SELECT j.id, kind, jsonb_build_object(
        'job', to_jsonb(j),
        'attempts', COALESCE(
            (SELECT jsonb_agg(to_jsonb(a) ORDER BY a.attempt)
             FROM job_attempts a WHERE a.job_id = j.id),
            '[]'::jsonb))
    FROM jobs j WHERE j.id = NEW.id
    RETURNING id INTO new_event;
    IF new_event IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (id, event_id, webhook_id, job_id)
    SELECT gen_random_uuid(), new_event, w.id, NEW.id FROM webhooks w
    WHERE (w.job_id = NEW.id OR (w.job_id IS NULL AND w.tenant = NEW.tenant))
      AND kind = ANY (w.events);
    PERFORM pg_notify('traindepot_webhooks', '');
    RETURN NULL;
END
$$
"""

_TRIGGER = """
CREATE CONSTRAINT TRIGGER jobs_webhook_events
AFTER INSERT OR UPDATE OF status ON jobs
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION traindepot_job_webhook_events()
"""


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_webhooks_job_id", "webhooks", ["job_id"], postgresql_where=sa.text("job_id IS NOT NULL")
    )
    op.create_index(
        "ix_webhooks_tenant", "webhooks", ["tenant"], postgresql_where=sa.text("job_id IS NULL")
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("webhook_id", sa.UUID(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending','delivered','failed')", name="webhook_deliveries_status_valid"
        ),
        sa.ForeignKeyConstraint(["event_id"], ["webhook_events.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_order",
        "webhook_deliveries",
        ["webhook_id", "job_id", "event_id"],
    )
    op.create_index("ix_webhook_deliveries_job_event", "webhook_deliveries", ["job_id", "event_id"])
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])
    op.execute(_FUNCTION)
    op.execute(_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_webhook_events ON jobs")
    op.execute("DROP FUNCTION traindepot_job_webhook_events()")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_index("ix_webhooks_tenant", table_name="webhooks")
    op.drop_index("ix_webhooks_job_id", table_name="webhooks")
    op.drop_table("webhooks")
