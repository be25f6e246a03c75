"""`GET /jobs/{id}`'s one statement: the job, its attempts and its queue position, as one
JSON document that PostgreSQL builds.

The most polled read of the service (every client that waits for a job polls it), so it is
the cheapest the API can make it: one round trip on an async connection (api/aio_db.py),
no ORM objects, and a body that pydantic validates from JSON text in one call
(`JobOut.model_validate_json`), which also drops anything stored in a JSON column that the
schema does not name. The statement is written in SQLAlchemy against the models, as every
other statement is, and compiled once, for asyncpg, when this module is imported.

`JobOut.of(job, attempts, position)` builds the same document from ORM objects (submit,
cancel, webhooks); tests/integration/test_job_read.py holds the two to the same bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from db.models import GangSeat, Job, JobAttempt
from db.scheduling import position_of

__all__ = ["JOB_JSON", "job_json_args"]


def _object(pairs: dict[str, Any]) -> ColumnElement[Any]:
    """`json_build_object('key', value, ...)`: the keys are this module's constants."""
    args: list[Any] = []
    for key, value in pairs.items():
        args += [literal_column(f"'{key}'"), value]
    return func.json_build_object(*args)


def _unless_empty(column: Any) -> ColumnElement[Any]:
    # `JobSummary.fields_of` reports an empty progress, result or error object as null.
    return func.nullif(column, literal_column("'{}'::jsonb"))


_NODE = {
    "node": GangSeat.node_rank,
    "worker": GangSeat.worker,
    "devices": GangSeat.devices,
}

# The nodes of an attempt of a job of several (db/gangs.py); empty for one node.
_NODES = (
    select(
        func.coalesce(
            func.json_agg(aggregate_order_by(_object(_NODE), GangSeat.node_rank)),
            literal_column("'[]'::json"),
        )
    )
    .where(GangSeat.job_id == JobAttempt.job_id, GangSeat.attempt == JobAttempt.attempt)
    .correlate(JobAttempt)
    .scalar_subquery()
)

_ATTEMPT = {
    "attempt": JobAttempt.attempt,
    "worker": JobAttempt.worker,
    "started_at": JobAttempt.started_at,
    "ended_at": JobAttempt.ended_at,
    "outcome": JobAttempt.outcome,
    "resumed_from_step": JobAttempt.resumed_from_step,
    "start": JobAttempt.start,
    "nodes": _NODES,
}

_ATTEMPTS = (
    select(
        func.coalesce(
            func.json_agg(aggregate_order_by(_object(_ATTEMPT), JobAttempt.attempt)),
            literal_column("'[]'::json"),
        )
    )
    .where(JobAttempt.job_id == Job.id)
    .scalar_subquery()
)

_JOB = {
    "id": Job.id,
    "name": Job.name,
    "tenant": Job.tenant,
    "submitted_by": Job.submitted_by,
    "cancelled_by": Job.cancelled_by,
    "cancel_requested_at": Job.cancel_requested_at,
    "status": Job.status,
    "attempt": Job.attempt,
    "queue": Job.queue,
    "priority": Job.priority,
    "created_at": Job.created_at,
    "started_at": Job.started_at,
    "finished_at": Job.finished_at,
    "progress": _unless_empty(Job.progress),
    "result": _unless_empty(Job.result),
    "error": _unless_empty(Job.error),
    "spec": Job.spec,
    "disk_bytes": Job.disk_bytes,
    "attempts": _ATTEMPTS,
    "queued_at": Job.queued_at,
    "queue_position": position_of(Job),
}

_compiled = (
    select(Job.tenant, Job.status, Job.queue, _object(_JOB).label("job"))
    .where(Job.id == bindparam("job_id"))
    .compile(dialect=asyncpg_dialect())  # type: ignore[no-untyped-call]
)

JOB_JSON: str = str(_compiled)
"""The SQL, for asyncpg: one row (`tenant`, `status`, `queue`, `job`: the JSON text) or
none."""
_PARAMS = tuple(_compiled.positiontup or ())
_VALUES = _compiled.params  # the statement's own constants (the queued status, 1)


def job_json_args(job_id: uuid.UUID) -> list[Any]:
    """`JOB_JSON`'s positional arguments for this job."""
    return [job_id if name == "job_id" else _VALUES[name] for name in _PARAMS]
