"""The webhooks' snapshot of a job's attempts (0008's trigger) gains each attempt's nodes
(a job of several nodes, `gang_seats`: node rank, worker, devices), as `GET /jobs/{id}`
shows them: a `job.running` event of a gang tells which workers run it.

Revision ID: 0015
Revises: 0014
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WITHOUT_NODES = "(SELECT jsonb_agg(to_jsonb(a) ORDER BY a.attempt)"
_WITH_NODES = """(SELECT jsonb_agg(to_jsonb(a) || jsonb_build_object('nodes', COALESCE(
                (SELECT jsonb_agg(jsonb_build_object(
                        'node', s.node_rank, 'worker', s.worker, 'devices', s.devices)
                        ORDER BY s.node_rank)
                 FROM gang_seats s WHERE s.job_id = a.job_id AND s.attempt = a.attempt),
                '[]'::jsonb)) ORDER BY a.attempt)"""


def _function_of_0008() -> str:
    """0008's trigger function, as that migration created it."""
    path = Path(__file__).with_name("0008_webhooks.py")
    spec = importlib.util.spec_from_file_location("traindepot_migration_0008", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: str = module._FUNCTION
    assert _WITHOUT_NODES in function
    return function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(_function_of_0008().replace(_WITHOUT_NODES, _WITH_NODES, 1))


def downgrade() -> None:
    op.execute(_function_of_0008())
