"""Submitting, reading and cancelling jobs."""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from api import job_docs, submission
from api.access import Access, AccessDep, Caller, load_job
from api.deps import SettingsDep
from api.errors import Conflict, NotFound
from api.responses import JOB_ROUTE, errors
from api.schemas import (
    JobOut,
    JobPage,
    JobSummary,
    ParametersOut,
    ValidatedSpec,
    json_response,
)
from api.webhook_schemas import SubmittedJobOut
from db import jobs
from db.models import Job, JobStatus
from traindepot import dispatch as capabilities
from traindepot import events
from traindepot.parameters import parameter_count
from traindepot.problems import Problem, SpecInvalid
from traindepot.spec import JobSpec
from traindepot.spec_examples import task_examples
from traindepot.validation import check_spec, source_jobs

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

_ERRORS = errors(*JOB_ROUTE)
# The body's JSON Schema is JobSpec's (components/schemas/JobSpec), with an example per task.
SpecBody = Annotated[JobSpec, Body(openapi_examples=task_examples())]


async def validated(
    spec: JobSpec, settings: SettingsDep, access: Access
) -> tuple[dict[str, Any], dict[str, Any], ParametersOut | None]:
    """Everything `check_spec` checks, with the live workers of the spec's queue and the
    caller's jobs (a job of another tenant to resume from does not exist), and the model's
    parameters counted on the meta device. Raises SpecInvalid (422) naming each problem.
    The jobs a `from_job` names are looked up the same way, with their status."""
    resume = spec.resume_from_checkpoint
    named = {job_id for _, job_id in source_jobs(spec)}
    if isinstance(resume, uuid.UUID):
        named.add(resume)
    statuses: dict[uuid.UUID, str] = {}
    if named:

        def look_up(session: Session, caller: Caller) -> dict[uuid.UUID, str]:
            found = (jobs.get(session=session, job_id=i, tenant=caller.scope) for i in named)
            return {job.id: job.status for job in found if job is not None}

        statuses = await access.run(look_up)

    def check() -> tuple[dict[str, Any], ParametersOut | None]:
        devices = (
            capabilities.live_workers(redis_url=settings.redis_url, queue=spec.queue)
            if settings.redis_url
            else None
        )
        effective = check_spec(
            spec,
            settings,
            devices=devices,
            job_exists=lambda job_id: job_id in statuses,
            job_status=statuses.get,
        )
        counted = parameter_count(spec)  # counted by the check: cached
        parameters = (
            ParametersOut(total=counted.total, trainable=counted.trainable) if counted else None
        )
        return effective, parameters

    # TrainingArguments' checks are CPU-bound (and the first one imports transformers); they
    # hold no database connection.
    effective, parameters = await run_in_threadpool(check)
    return spec.model_dump(mode="json"), effective, parameters


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Submit at most once: the same key (per tenant, for 24 h) with the same "
        "spec returns the job it created (200); with another spec, 422; while the first "
        "request is in flight, 409.",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=SubmittedJobOut,
    responses={
        **_ERRORS,
        200: {"model": JobOut, "description": "The job this Idempotency-Key created before"},
        **errors(
            s409="The Idempotency-Key's request is in flight",
            s429="The tenant's quota of active jobs is used up",
        ),
    },
)
async def submit_job(
    spec: SpecBody,
    settings: SettingsDep,
    access: AccessDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Response | SubmittedJobOut:
    """Validate the spec, store the job as `queued` (within the tenant's quota), then queue
    its id for a worker; the answer is the job as queued. The job's own webhooks
    (`notify.webhooks`) come back with their signing secrets, in this response only (a
    replay with the Idempotency-Key has none)."""
    await access.who()  # 401 before any work
    stored_spec, _, parameters = await validated(spec, settings, access)
    if idempotency_key is not None:
        earlier = await submission.replay(access, settings, idempotency_key, stored_spec)
        if earlier is not None:
            replayed = await job_docs.answer(earlier.id)
            replayed.headers["Location"] = f"/jobs/{earlier.id}"
            return replayed
    job, hooks = await submission.create(access, settings, stored_spec, idempotency_key)
    created = await submission.announced(job)
    response.headers["Location"] = f"/jobs/{job.id}"
    return SubmittedJobOut.created(created, hooks, parameters)


@router.post("/validate", response_model=ValidatedSpec, responses=_ERRORS)
async def validate_job(spec: SpecBody, settings: SettingsDep, access: AccessDep) -> ValidatedSpec:
    """The same validation as `POST /jobs`; no job is created. Returns the spec with every
    default filled in and the effective `TrainingArguments` the worker will build."""
    await access.who()
    stored_spec, effective, parameters = await validated(spec, settings, access)
    return ValidatedSpec(spec=stored_spec, training_args=effective, parameters=parameters)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
async def get_job(job_id: uuid.UUID, access: AccessDep) -> Response:
    """The job, with the history of its attempts (`attempts`)."""

    caller = await access.who()
    doc = await job_docs.read(job_id)  # cached until it changes, or one statement
    if doc is None or caller.scope not in (None, doc.tenant):
        raise NotFound(f"job {job_id}")
    return Response(doc.body, media_type="application/json")


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
async def list_jobs(
    access: AccessDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    tenant: Annotated[
        str | None, Query(description="Admin keys only: the jobs of this tenant alone")
    ] = None,
    queue: Annotated[str | None, Query(max_length=64, description="Only this queue's")] = None,
    name: Annotated[
        str | None,
        Query(max_length=200, description="Only names containing this (case-insensitive)"),
    ] = None,
    tag: Annotated[
        str | None,
        Query(
            max_length=400,
            description="Only jobs with this tag: `key` (any value) or `key=value`",
        ),
    ] = None,
) -> Response:
    """The caller's jobs (an admin's: every tenant's), newest first, optionally filtered
    by status, queue, name and tag; follow `next_cursor` for more (with the same filters)."""
    after = decode_cursor(cursor) if cursor else None
    filters = jobs.Filters(queue=queue, name=name, tag=tag)

    def read(session: Session, caller: Caller) -> Response:
        if tenant is not None and tenant != caller.tenant:
            caller.require_admin()
        scope = tenant if tenant is not None else caller.scope
        page = jobs.list_page(
            session=session,
            status=status,
            limit=limit + 1,
            cursor=after,
            tenant=scope,
            filters=filters,
        )
        more = len(page) > limit
        page = page[:limit]
        return json_response(
            JobPage(
                items=[JobSummary.of(j) for j in page],
                next_cursor=encode_cursor(page[-1]) if more and page else None,
            )
        )

    return await access.run(read, autocommit=True)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={
        **_ERRORS,
        **errors(s409="The job has already finished"),
    },
)
async def cancel_job(job_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """A queued job is cancelled at once; a running one goes `cancelling`, stops at the next
    step with a checkpoint, and ends `cancelled` with its partial TrainOutput. The job
    records when and by which key it was asked."""

    def cancel(session: Session, caller: Caller) -> tuple[Job, bool]:
        load_job(session, caller, job_id)  # 404 for a job the caller may not see
        job = jobs.request_cancel(session=session, job_id=job_id, by=caller.key_id)
        session.commit()
        return (job, True) if job is not None else (load_job(session, caller, job_id), False)

    job, changed = await access.run(cancel, commit=True)
    if not changed:
        if job.status == JobStatus.CANCELLING:
            return await job_docs.answer(job_id)
        raise Conflict(f"job {job_id} is already {job.status}")
    # After the commit: live readers (GET /jobs/{id}/events) see the change at once.
    await run_in_threadpool(
        events.publish_status,
        settings,
        job_id,
        status=str(job.status),
        attempt=job.attempt,
        result=job.result,
        error=job.error,
    )
    return await job_docs.answer(job_id)
