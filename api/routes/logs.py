"""`GET /jobs/{id}/logs`: a job's training log, its tail or followed as it grows.

Without an artifact store the log is the file in the job's directory, which the API shares
with the workers. With one, workers are elsewhere: a running job's log is its Redis stream,
an ended job's the store's `train.log` (traindepot/log_stream.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
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
from traindepot import artifacts, log_stream, logtail
from traindepot.statuses import JobStatus
from traindepot.store import ArtifactStore, answering, open_store

router = APIRouter(prefix="/jobs", tags=["live"])

LOG_FOLLOW_POLL_SECONDS = 0.5


async def _follow(
    job_id: uuid.UUID, start: bytes, read_more: Callable[[], bytes]
) -> AsyncIterator[bytes]:
    """The tail, then whatever the log gains (`read_more`: the next block, b"" when there is
    none yet), until the job has ended and the log is read."""
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
        while data := await run_in_threadpool(read_more):
            yield data
        if ended:
            return
        await anyio.sleep(LOG_FOLLOW_POLL_SECONDS)


def _file_reader(path: Path, offset: int) -> Callable[[], bytes]:
    def read() -> bytes:
        nonlocal offset
        data, offset = logtail.read_from(path, offset)
        return data

    return read


def _stream_reader(redis_url: str, job_id: uuid.UUID, after: str) -> Callable[[], bytes]:
    """The job's Redis stream from entry `after` on (a store is configured)."""

    def read() -> bytes:
        nonlocal after
        data, after = log_stream.read_after(redis_url, job_id, after)
        return data

    return read


def _stored_tail(
    store: ArtifactStore, redis_url: str | None, job_id: uuid.UUID, lines: int, ended: bool
) -> tuple[bytes, str]:
    """The tail from the store once the job has ended and its log is there; else from the
    stream (and the stream entry to follow from)."""
    if ended:
        try:
            size = store.size(job_id, "train.log")
        except artifacts.NoSuchArtifact:
            size = -1
        if size >= 0:
            with store.open(job_id, "train.log") as f:
                return logtail.tail_of(f, size, lines)[0], "+"
    if redis_url is None:
        return b"", "-"
    return log_stream.tail(redis_url, job_id, lines)


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
    status = await access.run(lambda s, c: load_job(s, c, job_id).status)
    store = open_store(settings)
    if store is not None:
        ended = JobStatus(status).is_terminal
        text, after = await run_in_threadpool(
            answering(_stored_tail), store, settings.redis_url, job_id, tail, ended
        )
        if not follow or settings.redis_url is None or after == "+":
            return PlainTextResponse(text, media_type="text/plain; charset=utf-8")
        stream_slots.take(request, (await access.who()).tenant)
        return StreamingResponse(
            _follow(job_id, text, _stream_reader(settings.redis_url, job_id, after)),
            media_type="text/plain; charset=utf-8",
            headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
        )
    path = settings.job_dir(job_id) / "train.log"
    data, offset = await run_in_threadpool(logtail.tail, path, tail)
    if not follow:
        return PlainTextResponse(data, media_type="text/plain; charset=utf-8")
    stream_slots.take(request, (await access.who()).tenant)  # 429 beyond the limits
    return StreamingResponse(
        _follow(job_id, data, _file_reader(path, offset)),
        media_type="text/plain; charset=utf-8",
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )
