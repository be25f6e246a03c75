"""job_metrics (job_id, kind, step) index: an evaluation metric's series without walking the
job's training points (db/metrics.py `series_filter`; docs/benchmarks.md, issue 13)

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_job_metrics_job_kind_step", "job_metrics", ["job_id", "kind", "step"])


def downgrade() -> None:
    op.drop_index("ix_job_metrics_job_kind_step", table_name="job_metrics")
