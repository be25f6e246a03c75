"""job_attempts.start (how an attempt's training child started: warm or cold), and the
index a tenant's job list filtered by status is paginated on (tenant, status, created_at,
id), which replaces (tenant, status): the quota count uses its prefix

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_attempts", sa.Column("start", sa.String(length=8), nullable=True))
    op.create_index(
        "ix_jobs_tenant_status_created_id", "jobs", ["tenant", "status", "created_at", "id"]
    )
    op.drop_index("ix_jobs_tenant_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_tenant_status", "jobs", ["tenant", "status"])
    op.drop_index("ix_jobs_tenant_status_created_id", table_name="jobs")
    op.drop_column("job_attempts", "start")
