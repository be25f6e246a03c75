"""Gangs (issue 28): `jobs.nodes` (the workers a job spans, `resources.nodes`) and
`gangs` (the gang forming for a queue) and `gang_seats`, the seats workers take in the gang of a multi-node job, then the nodes of
its attempt (db/gangs.py).

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("nodes", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "gangs",
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column(
            "formed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "gang_seats",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column(
            "taken_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("node_rank", sa.Integer(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", JSONB(), nullable=True),
        sa.Column("stop_reason", sa.String(16), nullable=True),
    )
    op.create_index(
        "ix_gang_seats_forming",
        "gang_seats",
        ["job_id", "worker"],
        unique=True,
        postgresql_where=sa.text("attempt IS NULL"),
    )
    op.create_index(
        "ix_gang_seats_node",
        "gang_seats",
        ["job_id", "attempt", "node_rank"],
        unique=True,
        postgresql_where=sa.text("attempt IS NOT NULL"),
    )
    op.create_index(
        "ix_gang_seats_queue",
        "gang_seats",
        ["queue"],
        postgresql_where=sa.text("attempt IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("gang_seats")
    op.drop_table("gangs")
    op.drop_column("jobs", "nodes")
