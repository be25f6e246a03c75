"""Submitting, reading and cancelling jobs."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from kombu.exceptions import OperationalError as BrokerError

from api.deps import SessionDep, SettingsDep
from api.errors import Conflict, NotFound
from api.schemas import ErrorOut, JobOut, JobPage, ValidatedSpec
from db import jobs
from db.models import Job, JobStatus
from traindepot import dispatch as capabilities
from traindepot import events
from traindepot.dispatch import enqueue
from traindepot.problems import Problem, SpecInvalid
from traindepot.spec import JobSpec
from traindepot.spec_examples import task_examples
from traindepot.validation import check_spec

log = logging.getLogger(__name__)


class _BodyErrorsRoute(APIRoute):
    """A body that is not a JSON object (empty, not JSON, an array) is reported at `body`.

    FastAPI reports those at `["body"]` or `["body", <offset>]`, and the app's error handler
    drops the `body` prefix (so that spec fields are named as in the spec), which would
    leave them naming nothing."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                problems = [_body_problem(e) for e in exc.errors()]
                if any(p is not None for p in problems):
                    raise SpecInvalid([p for p in problems if p is not None]) from exc
                raise

        return handle


def _body_problem(error: Any) -> Problem | None:
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        return Problem(("body",), f"the body is not JSON: {reason}{where}", "json_invalid")
    if loc == ("body",):
        what = "missing" if error.get("type") == "missing" else "not a JSON object"
        return Problem(
            ("body",), f"the body is {what}: send a job spec as a JSON object", "body_invalid"
        )
    return None


router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=_BodyErrorsRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such job"},
    422: {"model": ErrorOut, "description": "The request names the problem in `detail`"},
    503: {"model": ErrorOut, "description": "The database is unreachable"},
}
# The body's JSON Schema is JobSpec's (components/schemas/JobSpec), with an example per task.
SpecBody = Annotated[JobSpec, Body(openapi_examples=task_examples())]


def _get(session: SessionDep, job_id: uuid.UUID) -> Job:
    job = jobs.get(session=session, job_id=job_id)
    if job is None:
        raise NotFound(f"job {job_id}")
    return job


async def _validated(
    spec: JobSpec, session: SessionDep, settings: SettingsDep
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything `check_spec` checks, with the live workers of the spec's queue and the
    jobs table. Raises SpecInvalid (422) naming each problem."""

    def check() -> dict[str, Any]:
        devices = (
            capabilities.live_workers(redis_url=settings.redis_url, queue=spec.queue)
            if settings.redis_url
            else None
        )
        return check_spec(
            spec,
            settings,
            devices=devices,
            job_exists=lambda job_id: jobs.get(session=session, job_id=job_id) is not None,
        )

    # TrainingArguments' checks are CPU-bound (and the first one imports transformers).
    effective = await run_in_threadpool(check)
    return spec.model_dump(mode="json"), effective


@router.post("", status_code=201, response_model=JobOut, responses=_ERRORS)
async def submit_job(
    spec: SpecBody, session: SessionDep, settings: SettingsDep, response: Response
) -> JobOut:
    """Validate the spec, store the job as `queued`, then queue its id for a worker."""
    stored_spec, _ = await _validated(spec, session, settings)

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
async def validate_job(spec: SpecBody, session: SessionDep, settings: SettingsDep) -> ValidatedSpec:
    """The same validation as `POST /jobs`; no job is created. Returns the spec with every
    default filled in and the effective `TrainingArguments` the worker will build."""
    stored_spec, effective = await _validated(spec, session, settings)
    return ValidatedSpec(spec=stored_spec, training_args=effective)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: uuid.UUID, session: SessionDep) -> JobOut:
    """The job, with the history of its attempts (`attempts`)."""
    job = _get(session, job_id)
    return JobOut.of(job, attempts=jobs.attempts(session=session, job_id=job_id))


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
def cancel_job(job_id: uuid.UUID, session: SessionDep, settings: SettingsDep) -> JobOut:
    """A queued job is cancelled at once; a running one goes `cancelling`, stops at the next
    step with a checkpoint, and ends `cancelled` with its partial TrainOutput."""
    job = jobs.request_cancel(session=session, job_id=job_id)
    session.commit()
    if job is None:
        current = _get(session, job_id)
        if current.status == JobStatus.CANCELLING:
            return JobOut.of(current)
        raise Conflict(f"job {job_id} is already {current.status}")
    # After the commit: live readers (GET /jobs/{id}/events) see the change at once.
    events.publish_status(
        settings,
        job_id,
        status=str(job.status),
        attempt=job.attempt,
        result=job.result,
        error=job.error,
    )
    return JobOut.of(job)
