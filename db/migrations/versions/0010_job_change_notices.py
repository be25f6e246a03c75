"""Every committed change of a job's row or of its attempts is announced on the
`traindepot_jobs` channel (NOTIFY): the API's cache of job documents (api/job_docs.py)
drops what changed, so `GET /jobs/{id}` can answer from memory and still never be stale
beyond the notice's delivery.

The payload is the job's id, followed by its queue when the job was or is queued (every
queued job of that queue may have moved in it); PostgreSQL folds a transaction's identical
notices into one, and delivers them when, and only when, it commits.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION traindepot_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- A queued job's change (or a job that enters or leaves the queue) may move
            -- every queued job of its queue: those notices name the queue too.
            IF TG_OP <> 'INSERT' THEN
                PERFORM pg_notify('traindepot_jobs', OLD.id::text
                    || CASE WHEN OLD.status = 'queued' THEN ' ' || OLD.queue ELSE '' END);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                PERFORM pg_notify('traindepot_jobs', NEW.id::text
                    || CASE WHEN NEW.status = 'queued' THEN ' ' || NEW.queue ELSE '' END);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION traindepot_attempt_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('traindepot_jobs', OLD.job_id::text);
            ELSE
                PERFORM pg_notify('traindepot_jobs', NEW.job_id::text);
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER jobs_changed AFTER INSERT OR UPDATE OR DELETE ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION traindepot_job_changed()"
    )
    op.execute(
        "CREATE TRIGGER job_attempts_changed AFTER INSERT OR UPDATE OR DELETE ON job_attempts "
        "FOR EACH ROW EXECUTE FUNCTION traindepot_attempt_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER job_attempts_changed ON job_attempts")
    op.execute("DROP TRIGGER jobs_changed ON jobs")
    op.execute("DROP FUNCTION traindepot_attempt_changed()")
    op.execute("DROP FUNCTION traindepot_job_changed()")
