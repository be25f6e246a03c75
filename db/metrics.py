"""Queries on a job's metric history (``job_metrics``).

Row ids are the cursor of the live event stream (``GET /jobs/{id}/events``): every write of
a point takes a fresh id from the table's sequence, a re-logged point included (a resumed
attempt logging a step again updates that row in place *and* moves it to a new id). Only one
attempt writes a job's points at a time, one transaction after the other (the flusher, fenced
by ``attempt_owns_job``), so for one job "id > N" is exactly "written after point N": a
reader that has seen every point up to id N misses nothing by asking for ``id > N``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, text
from sqlalchemy.orm import Session

from db.models import JobMetric
from traindepot.events import dumps


def merge_points(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points of one batch merged per (step, kind), in first-seen order: one upsert
    statement may not touch a row twice."""
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for p in points:
        key = (p["step"], p["kind"])
        if key in merged:
            merged[key] = {**merged[key], **p, "values": {**merged[key]["values"], **p["values"]}}
        else:
            merged[key] = dict(p)
    return list(merged.values())


# One statement whatever the batch size, its rows passed as one JSON document: the flusher
# shares the GIL with the training loop, and building a multi-row VALUES statement per batch
# would cost it far more Python time than one `json.dumps`. Rows are inserted in batch order
# (ORDINALITY), so ids follow the order the points were logged in.
_UPSERT = text(
    """
    INSERT INTO job_metrics (job_id, attempt, step, kind, epoch, "values", recorded_at)
    SELECT CAST(:job_id AS uuid), :attempt, p.step, p.kind, p.epoch, p."values", p.recorded_at
    FROM ROWS FROM (
        jsonb_to_recordset(CAST(:points AS jsonb))
        AS (step int, kind text, epoch float8, "values" jsonb, recorded_at timestamptz)
    ) WITH ORDINALITY AS p(step, kind, epoch, "values", recorded_at, n)
    ORDER BY p.n
    ON CONFLICT ON CONSTRAINT uq_job_metrics_job_step_kind DO UPDATE SET
        id = nextval(pg_get_serial_sequence('job_metrics', 'id')),
        epoch = EXCLUDED.epoch,
        "values" = EXCLUDED."values",
        attempt = EXCLUDED.attempt,
        recorded_at = EXCLUDED.recorded_at
    RETURNING id, step, kind
    """
)


def upsert_points(
    *, session: Session, job_id: uuid.UUID, attempt: int, points: Sequence[dict[str, Any]]
) -> dict[tuple[int, str], int]:
    """Store points (dicts with step, kind, epoch, values, recorded_at) merged per
    (step, kind); a point already stored, e.g. logged again by a resumed attempt, is
    updated in place and gets a new id (see the module docstring). Returns the row id of
    each (step, kind)."""
    if not points:
        return {}
    rows = [
        {
            "step": p["step"],
            "kind": p["kind"],
            "epoch": p.get("epoch"),
            "values": p["values"],
            "recorded_at": _iso(p["recorded_at"]),
        }
        for p in merge_points(points)
    ]
    result = session.execute(
        _UPSERT,
        {
            "job_id": str(job_id),
            "attempt": attempt,
            "points": dumps(rows),
        },
    )
    return {(step, kind): point_id for point_id, step, kind in result}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def points_after_query(*, job_id: uuid.UUID, after_id: int, limit: int) -> Select[JobMetric]:
    """An index range scan on `ix_job_metrics_job_id_id`, already in id order."""
    return (
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.id > after_id)
        .order_by(JobMetric.id)
        .limit(limit)
    )


def points_after(
    *, session: Session, job_id: uuid.UUID, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` points of a job written after point `after_id`, in id (= write) order:
    one page of the event stream's backlog."""
    query = points_after_query(job_id=job_id, after_id=after_id, limit=limit)
    return [as_dict(point) for point in session.scalars(query)]


def series_length(*, session: Session, job_id: uuid.UUID, key: str) -> int:
    """How many points of the job have a numeric value for `key`."""
    count = session.scalar(
        text(
            """SELECT count(*) FROM job_metrics
            WHERE job_id = :job_id AND jsonb_typeof("values" -> :key) = 'number'"""
        ),
        {"job_id": job_id, "key": key},
    )
    return int(count or 0)


def iter_series(
    *, session: Session, job_id: uuid.UUID, key: str, chunk: int = 10_000
) -> Iterator[tuple[int, float]]:
    """(step, value) of every point with a numeric `key`, in step order, read through a
    server-side cursor `chunk` rows at a time: memory stays bounded however long the run."""
    result = session.execute(
        text(
            """SELECT step, CAST("values" ->> :key AS float8) FROM job_metrics
            WHERE job_id = :job_id AND jsonb_typeof("values" -> :key) = 'number'
            ORDER BY step, id"""
        ),
        {"job_id": job_id, "key": key},
        execution_options={"yield_per": chunk},
    )
    try:
        for step, value in result:
            yield int(step), float(value)
    finally:
        result.close()


def as_dict(point: JobMetric) -> dict[str, Any]:
    recorded: datetime = point.recorded_at
    return {
        "id": point.id,
        "step": point.step,
        "kind": point.kind,
        "epoch": point.epoch,
        "values": point.values,
        "attempt": point.attempt,
        "recorded_at": recorded.isoformat(),
    }
