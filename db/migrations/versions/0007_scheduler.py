"""The scheduler's columns: jobs.queued_at (its place in the queue, kept when it is
requeued), jobs.effective_queued_at (the order the claim serves: queued_at moved earlier by
its priority, see db/scheduling.py), jobs.gpus (the devices it needs), and the index the
claim walks.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The aging the existing rows are ordered with (the default of
# `TRAINDEPOT_AGING_SECONDS_PER_PRIORITY`); rows queued later use the setting.
_AGING_SECONDS = 600


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.add_column(
        "jobs",
        sa.Column(
            "effective_queued_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
    )
    op.add_column("jobs", sa.Column("gpus", sa.Integer(), server_default="1", nullable=False))
    op.execute(
        "UPDATE jobs SET queued_at = created_at, effective_queued_at = created_at"
        f" - priority * interval '{_AGING_SECONDS} seconds',"
        " gpus = coalesce((spec->'resources'->>'gpus')::int, 1)"
    )
    op.create_index(
        "ix_jobs_queued_order",
        "jobs",
        ["queue", "effective_queued_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queued_order", table_name="jobs")
    op.drop_column("jobs", "gpus")
    op.drop_column("jobs", "effective_queued_at")
    op.drop_column("jobs", "queued_at")
