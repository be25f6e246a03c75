"""`GET /jobs/{id}/logs`: a job's training log, its tail or followed as it grows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse

from api import stream_slots
from api.access import AccessDep, load_job
from api.database import Saturated
from api.deps import SettingsDep
from api.responses import JOB_ROUTE, json_errors
from api.routes.events import read_job
from traindepot import logtail

router = APIRouter(prefix="/jobs", tags=["live"])

LOG_FOLLOW_POLL_SECONDS = 0.5


async def _follow(job_id: uuid.UUID, path: Path, start: bytes, offset: int) -> AsyncIterator[bytes]:
    """The tail, then whatever the log gains, until the job has ended and the log is read."""
    if start:
        yield start
    while True:
        try:
            job = await read_job(job_id)
        except Saturated:  # the database is busy: look again at the next round
            await anyio.sleep(LOG_FOLLOW_POLL_SECONDS)
            continue
        ended = job is None or job.terminal
        # Read everything there is (in blocks); after the end, this is the last of it.
        while True:
            data, offset = await run_in_threadpool(logtail.read_from, path, offset)
            if not data:
                break
            yield data
        if ended:
            return
        await anyio.sleep(LOG_FOLLOW_POLL_SECONDS)


@router.get(
    "/{job_id}/logs",
    response_class=PlainTextResponse,
    response_model=None,
    responses={
        **json_errors(*JOB_ROUTE, 429),
        200: {"content": {"text/plain": {}}, "description": "The log"},
    },
)
async def job_logs(
    job_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    access: AccessDep,
    tail: Annotated[int, Query(ge=0, le=100_000, description="How many last lines")] = 100,
    follow: Annotated[
        bool,
        Query(
            description="Keep the response open and stream what is appended (chunked)"
            " until the job has ended"
        ),
    ] = False,
) -> Response:
    """The job's training log (the training process's output: one JSON object per logged
    step, Python logging, one header line per attempt). Never read whole: the tail is read
    backwards in blocks and capped at 8 MiB."""
    await access.run(lambda s, c: load_job(s, c, job_id))
    path = settings.job_dir(job_id) / "train.log"
    data, offset = await run_in_threadpool(logtail.tail, path, tail)
    if not follow:
        return PlainTextResponse(data, media_type="text/plain; charset=utf-8")
    stream_slots.take(request, (await access.who()).tenant)  # 429 beyond the limits
    return StreamingResponse(
        _follow(job_id, path, data, offset),
        media_type="text/plain; charset=utf-8",
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )
