"""Submitting, reading and cancelling jobs."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response
from fastapi.concurrency import run_in_threadpool
from kombu.exceptions import OperationalError as BrokerError

from api.deps import SessionDep, SettingsDep
from api.errors import Conflict, NotFound
from api.schemas import ErrorOut, JobOut, JobPage, ValidatedSpec
from db import jobs
from db.models import Job, JobStatus
from traindepot.problems import Problem, SpecInvalid
from traindepot.spec import JobSpec, example_spec
from traindepot.validation import check_spec
from worker.celery_app import enqueue

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such job"},
    422: {"model": ErrorOut, "description": "The request names the problem in `detail`"},
    503: {"model": ErrorOut, "description": "The database is unreachable"},
}
SpecBody = Annotated[
    JobSpec,
    Body(
        openapi_examples={
            "tiny-causal-lm": {"summary": "A tiny offline causal LM", "value": example_spec()}
        }
    ),
]


def _get(session: SessionDep, job_id: uuid.UUID) -> Job:
    job = jobs.get(session=session, job_id=job_id)
    if job is None:
        raise NotFound(f"job {job_id}")
    return job


async def _validated(spec: JobSpec, settings: SettingsDep) -> tuple[dict[str, Any], dict[str, Any]]:
    # TrainingArguments' checks are CPU-bound (and the first one imports transformers).
    effective = await run_in_threadpool(check_spec, spec, settings)
    return spec.model_dump(mode="json"), effective


@router.post("", status_code=201, response_model=JobOut, responses=_ERRORS)
async def submit_job(
    spec: SpecBody, session: SessionDep, settings: SettingsDep, response: Response
) -> JobOut:
    """Validate the spec, store the job as `queued`, then queue its id for a worker."""
    stored_spec, _ = await _validated(spec, settings)

    def store() -> Job:
        job = jobs.create(session=session, spec=stored_spec)
        session.commit()
        return job

    job = await run_in_threadpool(store)
    # Only after the commit: the message must never name a row a worker cannot see.
    try:
        await run_in_threadpool(enqueue, job_id=job.id, queue=job.queue, priority=job.priority)

        def mark() -> None:
            jobs.mark_enqueued(session=session, job_id=job.id)
            session.commit()

        await run_in_threadpool(mark)
    except BrokerError as exc:
        # The row is stored; the reaper enqueues it once Redis is back. Nothing is lost.
        log.warning("job %s stored but not enqueued yet: %s", job.id, exc)
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobOut.of(job)


@router.post("/validate", response_model=ValidatedSpec, responses=_ERRORS)
async def validate_job(spec: SpecBody, settings: SettingsDep) -> ValidatedSpec:
    """The same validation as `POST /jobs`; no job is created."""
    stored_spec, effective = await _validated(spec, settings)
    return ValidatedSpec(spec=stored_spec, training_args=effective)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: uuid.UUID, session: SessionDep) -> JobOut:
    return JobOut.of(_get(session, job_id))


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> jobs.Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return jobs.Cursor(created_at=datetime.fromisoformat(created), id=uuid.UUID(job_id))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise SpecInvalid(
            [Problem(("query", "cursor"), "not a cursor returned by GET /jobs", "invalid_cursor")]
        ) from exc


@router.get("", response_model=JobPage, responses=_ERRORS)
def list_jobs(
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs, newest first, optionally with one status; follow `next_cursor` for more."""
    page = jobs.list_page(
        session=session,
        status=status,
        limit=limit + 1,
        cursor=decode_cursor(cursor) if cursor else None,
    )
    more = len(page) > limit
    page = page[:limit]
    return JobPage(
        items=[JobOut.of(j) for j in page],
        next_cursor=encode_cursor(page[-1]) if more and page else None,
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={
        **_ERRORS,
        409: {"model": ErrorOut, "description": "The job has already finished"},
    },
)
def cancel_job(job_id: uuid.UUID, session: SessionDep) -> JobOut:
    """A queued job is cancelled at once; a running one goes `cancelling`, stops at the next
    step with a checkpoint, and ends `cancelled` with its partial TrainOutput."""
    job = jobs.request_cancel(session=session, job_id=job_id)
    session.commit()
    if job is None:
        current = _get(session, job_id)
        if current.status == JobStatus.CANCELLING:
            return JobOut.of(current)
        raise Conflict(f"job {job_id} is already {current.status}")
    return JobOut.of(job)
