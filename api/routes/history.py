"""`GET /jobs/{id}/metrics`: a job's metric history, downsampled for charts; and
`GET /jobs/{id}/metrics/keys`: the names of the metrics it logged."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from api.access import AccessDep, Caller, load_job
from api.responses import JOB_ROUTE, errors
from api.schemas import MetricKeysOut, MetricSeries, MetricsOut, json_response
from db import metrics
from traindepot.downsample import downsample
from traindepot.problems import Problem, SpecInvalid

router = APIRouter(prefix="/jobs", tags=["live"])

# Up to this many points (or max_points, if more) a series is read whole for the exact
# envelope; past it, sampled in the database (docs/benchmarks.md: reading a million points
# took over a second, the sampled read tens of milliseconds).
EXACT_LIMIT = 20_000


def _keys(raw: str) -> list[str]:
    keys = list(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))
    if not keys or len(keys) > 20 or any(len(k) > 100 for k in keys):
        raise SpecInvalid(
            [
                Problem(
                    ("query", "keys"),
                    "give 1 to 20 comma-separated metric names of at most 100 characters",
                    "invalid_keys",
                )
            ]
        )
    return keys


@router.get("/{job_id}/metrics", response_model=MetricsOut, responses=errors(*JOB_ROUTE))
async def job_metrics(
    job_id: uuid.UUID,
    access: AccessDep,
    keys: Annotated[
        str, Query(description="Comma-separated metric names, e.g. `loss,eval_loss`")
    ] = "loss",
    max_points: Annotated[int, Query(ge=4, le=100_000)] = 1000,
) -> Response:
    """Each metric's history as (step, value) pairs, at most `max_points` per metric.

    A job of up to `max(20000, max_points)` points (evaluations, for an `eval_*` key) has
    each series read whole and split into `max_points // 4` buckets, each keeping its
    first, last, minimum and maximum point, so spikes and the global extremes survive
    (`sampled: false`, `count` exact). A longer history is sampled by step in the database
    (`sampled: true`, `count` null): its first and last points and the first point at or
    after each of `max_points - 2` evenly spaced steps, about `max_points` index lookups
    however long the run."""
    names = _keys(keys)
    exact_limit = max(EXACT_LIMIT, max_points)

    def read(session: Session, caller: Caller) -> Response:
        load_job(session, caller, job_id)
        series: dict[str, MetricSeries] = {}
        for key in names:
            if metrics.history_longer_than(
                session=session, job_id=job_id, key=key, limit=exact_limit
            ):
                sampled = metrics.sample_series(
                    session=session, job_id=job_id, key=key, max_points=max_points
                )
                series[key] = MetricSeries(count=None, sampled=True, points=sampled)
                continue
            count = metrics.series_length(session=session, job_id=job_id, key=key)
            points = downsample(
                metrics.iter_series(session=session, job_id=job_id, key=key),
                count=count,
                max_points=max_points,
            )
            series[key] = MetricSeries(
                count=count, points=[(int(step), value) for step, value in points]
            )
        return json_response(MetricsOut(job_id=job_id, max_points=max_points, series=series))

    return await access.run(read)


@router.get("/{job_id}/metrics/keys", response_model=MetricKeysOut, responses=errors(*JOB_ROUTE))
async def job_metric_keys(job_id: uuid.UUID, access: AccessDep) -> Response:
    """The names of the numeric metrics the job logged, for a chart's chooser (the
    dashboard's comparison). Read from the job's first and last 1,000 points of each kind
    (training logs, evaluations, the end-of-train summary), a bounded read however long the
    run: a key logged only in the middle of a longer history is not listed."""

    def read(session: Session, caller: Caller) -> Response:
        load_job(session, caller, job_id)
        keys = metrics.logged_keys(session=session, job_id=job_id)
        return json_response(MetricKeysOut(job_id=job_id, keys=keys))

    return await access.run(read)
