"""Changes a worker must act on at once are announced on the `traindepot_workers` channel
(NOTIFY), at the commit that makes them: a running attempt's job going `cancelling` (the
supervisor stops its training child), or leaving `running`/`cancelling` or changing its
attempt by anyone else's hand (the reaper, another attempt: the supervisor renews its
lease at once, finds it lost and kills its child). worker/control.py LISTENs.

The payload is `<job id> <status> <attempt>`, the row after the change. A lease renewal,
a progress write or any other update that leaves the status and the attempt as they were
notifies nothing: the channel stays quiet however many jobs run.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION traindepot_worker_notice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('traindepot_workers',
                NEW.id::text || ' ' || NEW.status::text || ' ' || NEW.attempt::text);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER jobs_worker_notice AFTER UPDATE OF status, attempt ON jobs "
        "FOR EACH ROW WHEN (OLD.status::text IN ('running', 'cancelling') "
        "AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.attempt IS DISTINCT FROM NEW.attempt)) "
        "EXECUTE FUNCTION traindepot_worker_notice()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_worker_notice ON jobs")
    op.execute("DROP FUNCTION traindepot_worker_notice()")
