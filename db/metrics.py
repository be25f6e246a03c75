"""Queries on a job's metric history (``job_metrics``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import Job, JobMetric


def attempt_owns_job(*, session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Lock the job row (shared) and check `attempt` is still the current one.

    Held until the caller commits, so the reaper cannot hand the job to a newer attempt
    between this check and the writes that follow it.
    """
    current = session.scalar(select(Job.attempt).where(Job.id == job_id).with_for_update(read=True))
    return current == attempt


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


def upsert_points(
    *, session: Session, job_id: uuid.UUID, attempt: int, points: Sequence[dict[str, Any]]
) -> dict[tuple[int, str], int]:
    """Store points (dicts with step, kind, epoch, values, recorded_at) merged per
    (step, kind); a point already stored, e.g. logged again by a resumed attempt, is
    updated in place. Returns the row id of each (step, kind)."""
    if not points:
        return {}
    rows = [
        {
            "job_id": job_id,
            "attempt": attempt,
            "step": p["step"],
            "kind": p["kind"],
            "epoch": p.get("epoch"),
            "values": p["values"],
            "recorded_at": p["recorded_at"],
        }
        for p in merge_points(points)
    ]
    insert_rows = insert(JobMetric).values(rows)
    stmt = insert_rows.on_conflict_do_update(
        constraint="uq_job_metrics_job_step_kind",
        set_={
            "epoch": insert_rows.excluded.epoch,
            "values": insert_rows.excluded["values"],
            "attempt": insert_rows.excluded.attempt,
            "recorded_at": insert_rows.excluded.recorded_at,
        },
    ).returning(JobMetric.id, JobMetric.step, JobMetric.kind)
    return {(step, kind): point_id for point_id, step, kind in session.execute(stmt)}


def history(
    *,
    session: Session,
    job_id: uuid.UUID,
    kinds: Sequence[str] | None = None,
    after_id: int | None = None,
    limit: int | None = None,
) -> list[JobMetric]:
    """Points of a job in step order (ties: kind order of insertion)."""
    query = select(JobMetric).where(JobMetric.job_id == job_id)
    if kinds:
        query = query.where(JobMetric.kind.in_(kinds))
    if after_id is not None:
        query = query.where(JobMetric.id > after_id)
    query = query.order_by(JobMetric.step, JobMetric.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


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
