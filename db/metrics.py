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


def series_filter(key: str) -> str:
    """The WHERE clause of a job's points with a numeric `key` (parameters :job_id, :key).

    A key named `eval_*` is only ever in evaluation points (the callback's `point_kind`
    makes every log with such a key an `eval` point), so its series is read on
    `ix_job_metrics_job_kind_step` among the job's evaluations alone: `eval_loss` of a run
    with a million training points reads its thousand evaluations, not the million."""
    where = """job_id = :job_id AND jsonb_typeof("values" -> :key) = 'number'"""
    return where + (" AND kind = 'eval'" if key.startswith("eval_") else "")


def iter_series(
    *, session: Session, job_id: uuid.UUID, key: str, chunk: int = 10_000
) -> Iterator[tuple[int, float]]:
    """(step, value) of every point with a numeric `key`, in step order, read through a
    server-side cursor `chunk` rows at a time: memory stays bounded however long the run."""
    result = session.execute(
        text(
            f"""SELECT step, CAST("values" ->> :key AS float8) FROM job_metrics
            WHERE {series_filter(key)} ORDER BY step, id"""
        ),
        {"job_id": job_id, "key": key},
        execution_options={"yield_per": chunk},
    )
    try:
        for step, value in result:
            yield int(step), float(value)
    finally:
        result.close()


def history_longer_than(*, session: Session, job_id: uuid.UUID, key: str, limit: int) -> bool:
    """Whether the job has more than `limit` points that may carry `key` (its `eval`
    points for an `eval_*` key, else all of them): an index-only walk that stops after
    `limit + 1` entries, so a long history costs `limit` index entries, never a read of
    every point. (Counting the points that do carry the key would read each one's JSON.)"""
    kind = " AND kind = 'eval'" if key.startswith("eval_") else ""
    found = session.scalar(
        text(
            f"""SELECT count(*) FROM (
                SELECT 1 FROM job_metrics WHERE job_id = :job_id{kind} LIMIT :limit) AS p"""
        ),
        {"job_id": job_id, "limit": limit + 1},
    )
    return int(found or 0) > limit


def series_length(*, session: Session, job_id: uuid.UUID, key: str) -> int:
    """How many points of the job have a numeric value for `key` (reads each one)."""
    count = session.scalar(
        text(f"SELECT count(*) FROM job_metrics WHERE {series_filter(key)}"),
        {"job_id": job_id, "key": key},
    )
    return int(count or 0)


# The first point with a numeric `key` at or after each of `samples` evenly spaced steps of
# [lo, lo + span): one index lookup per sample on `uq_job_metrics_job_step_kind`
# (job_id, step, kind), or `ix_job_metrics_job_kind_step` for an `eval_*` key, whose bounds
# are integers so that they are the scan's Index Cond (docs/benchmarks.md shows the plan).
# An empty stretch of steps contributes nothing.
_SAMPLES = """
    SELECT s.step, s.value
    FROM generate_series(0, :samples - 1) AS b(i)
    CROSS JOIN LATERAL (
        SELECT step, CAST("values" ->> :key AS float8) AS value
        FROM job_metrics
        WHERE {where}
          AND step >= :lo + CAST(b.i::bigint * :span / :samples AS integer)
          AND step < :lo + CAST((b.i::bigint + 1) * :span / :samples AS integer)
        ORDER BY step
        LIMIT 1
    ) AS s
    ORDER BY s.step
"""

_END = """SELECT step, CAST("values" ->> :key AS float8) FROM job_metrics
    WHERE {where} ORDER BY step {order}, id {order} LIMIT 1"""


def sample_series(
    *, session: Session, job_id: uuid.UUID, key: str, max_points: int
) -> list[tuple[int, float]]:
    """At most `max_points` (step, value) pairs of a long series, in step order, read with
    about `max_points` index lookups whatever the history's length: the first point, the
    last point, and between them the first point at or after each of `max_points - 2`
    evenly spaced steps. Spikes between two samples are not seen (finding them means
    reading every point: see `iter_series`). Runs in the caller's transaction, where it
    turns JIT off: compiling the lookups' plan took longer than running it."""
    where = series_filter(key)
    params: dict[str, Any] = {"job_id": job_id, "key": key}
    first = session.execute(text(_END.format(where=where, order="ASC")), params).first()
    last = session.execute(text(_END.format(where=where, order="DESC")), params).first()
    if first is None or last is None:
        return []
    lo, hi = int(first[0]), int(last[0])
    session.execute(text("SET LOCAL jit = off"))
    rows = session.execute(
        text(_SAMPLES.format(where=where)),
        {**params, "lo": lo + 1, "span": max(hi - lo - 1, 0), "samples": max(max_points - 2, 1)},
    )
    middle = [(int(step), float(value)) for step, value in rows if lo < step < hi]
    ends = [(lo, float(first[1]))] + ([(hi, float(last[1]))] if hi != lo else [])
    return [ends[0], *middle, *ends[1:]]


# The kinds of point the callback writes (worker/callback.py `point_kind`).
POINT_KINDS = ("train", "eval", "summary")

# The numeric keys of a job's first and last `:n` points of each kind, each end a range scan
# on `ix_job_metrics_job_kind_step`: a bounded read however long the run.
_KEYS = """
    SELECT DISTINCT e.key
    FROM unnest(CAST(:kinds AS text[])) AS k(kind)
    CROSS JOIN LATERAL (
        (SELECT "values" FROM job_metrics
         WHERE job_id = :job_id AND kind = k.kind ORDER BY step LIMIT :n)
        UNION ALL
        (SELECT "values" FROM job_metrics
         WHERE job_id = :job_id AND kind = k.kind ORDER BY step DESC LIMIT :n)
    ) AS p
    CROSS JOIN LATERAL jsonb_each(p."values") AS e
    WHERE jsonb_typeof(e.value) = 'number'
    ORDER BY e.key
"""


def logged_keys(*, session: Session, job_id: uuid.UUID, ends: int = 1000) -> list[str]:
    """The names of the numeric metrics a job logged, in name order: those of its first and
    last `ends` points of each kind (a key logged only in the middle of a longer history is
    not seen; reading every point's JSON would cost seconds on a long run)."""
    rows = session.execute(text(_KEYS), {"kinds": list(POINT_KINDS), "job_id": job_id, "n": ends})
    return [str(key) for (key,) in rows]


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
