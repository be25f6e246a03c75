"""job_metrics (job_id, id) index: the event stream's backlog, "points of job X after id N"

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_job_metrics_job_id_id", "job_metrics", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_metrics_job_id_id", table_name="job_metrics")
