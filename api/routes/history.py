"""`GET /jobs/{id}/metrics`: a job's metric history, downsampled for charts."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from api.access import AccessDep, Caller, load_job
from api.responses import JOB_ROUTE, errors
from api.schemas import MetricSeries, MetricsOut, json_response
from db import metrics
from traindepot.downsample import downsample
from traindepot.problems import Problem, SpecInvalid

router = APIRouter(prefix="/jobs", tags=["live"])


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
    """Each metric's history as (step, value) pairs, at most `max_points` per metric: a
    longer history is split into `max_points // 4` buckets, each keeping its first, last,
    minimum and maximum point, so spikes and the global extremes survive. Read through a
    server-side cursor: memory stays bounded however long the run."""
    names = _keys(keys)

    def read(session: Session, caller: Caller) -> Response:
        load_job(session, caller, job_id)
        series: dict[str, MetricSeries] = {}
        for key in names:
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
