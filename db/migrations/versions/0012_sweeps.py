"""Hyperparameter sweeps (docs/architecture.md, "Sweeps"): the `sweeps` table, the trial
columns of `jobs` (a trial is an ordinary job tagged with its sweep and its trial number),
and the `optuna` schema in which Optuna's RDBStorage keeps its studies (its own tables and
its own `alembic_version`, apart from the service's).

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS optuna")
    op.create_table(
        "sweeps",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tenant", sa.String(64), server_default="default", nullable=False),
        sa.Column(
            "submitted_by",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("api_keys.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("max_concurrent_trials", sa.Integer(), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running','cancelling','succeeded','cancelled')",
            name="sweeps_status_valid",
        ),
    )
    op.create_index("ix_sweeps_tenant_created", "sweeps", ["tenant", "created_at"])
    op.create_index(
        "ix_sweeps_active",
        "sweeps",
        ["status"],
        postgresql_where=sa.text("status IN ('running', 'cancelling')"),
    )
    op.add_column(
        "jobs",
        sa.Column(
            "sweep_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("sweeps.id", ondelete="CASCADE"),
            nullable=True,
        ),
    )
    op.add_column("jobs", sa.Column("trial_number", sa.Integer(), nullable=True))
    op.create_index(
        "ix_jobs_sweep_trial",
        "jobs",
        ["sweep_id", "trial_number"],
        unique=True,
        postgresql_where=sa.text("sweep_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_sweep_trial", table_name="jobs")
    op.drop_column("jobs", "trial_number")
    op.drop_column("jobs", "sweep_id")
    op.drop_index("ix_sweeps_active", table_name="sweeps")
    op.drop_index("ix_sweeps_tenant_created", table_name="sweeps")
    op.drop_table("sweeps")
    op.execute("DROP SCHEMA IF EXISTS optuna CASCADE")
