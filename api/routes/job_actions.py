"""What a team does with a job besides submitting and cancelling it: change the priority of
a queued job, retry a failed or cancelled one under the same id, clone one with changes.

Scoped like every route (a job of another tenant is a 404) and within the tenant's quota of
active jobs (a retry or a clone adds one: 429). The scheduler's side of each is in
`db/scheduling.py`.
"""

from __future__ import annotations

import uuid
from typing import Any

import pydantic
from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api import job_docs, submission
from api.access import AccessDep, Caller, load_job
from api.deps import SettingsDep
from api.errors import Conflict
from api.responses import JOB_ROUTE, errors
from api.routes.jobs import validated
from api.schemas import CloneIn, JobOut, JobPatch
from api.webhook_schemas import SubmittedJobOut
from db import scheduling
from db.models import Job, JobStatus
from traindepot import events
from traindepot.problems import Problem, SpecInvalid
from traindepot.spec import JobSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])

_ERRORS = errors(*JOB_ROUTE)


@router.patch("/{job_id}", response_model=JobOut, responses=_ERRORS)
async def patch_job(
    job_id: uuid.UUID, change: JobPatch, settings: SettingsDep, access: AccessDep
) -> Response:
    """Change the priority of a queued job. Its wait so far still counts (aging); a job
    that is no longer queued is a 422 (its priority no longer decides anything)."""

    def patch(session: Session, caller: Caller) -> Job:
        job = load_job(session, caller, job_id)
        changed = scheduling.set_priority(
            session=session,
            job_id=job_id,
            priority=change.priority,
            aging_seconds=settings.aging_seconds_per_priority,
        )
        if changed is None:
            raise SpecInvalid(
                [
                    Problem(
                        ("priority",),
                        f"job {job_id} is {job.status}: only a queued job's priority can change",
                        "job_not_queued",
                    )
                ]
            )
        return changed

    await access.run(patch, commit=True)
    return await job_docs.answer(job_id)


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    responses={
        **_ERRORS,
        **errors(
            s409="The job is not failed or cancelled",
            s429="The tenant's quota of active jobs is used up",
        ),
    },
)
async def retry_job(job_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """Run a failed or cancelled job again under the same id: it is queued anew (at the
    back of its priority), its next attempt resumes from its last whole checkpoint, and its
    history continues on the same step axis."""

    def reopen(session: Session, caller: Caller) -> Job:
        job = load_job(session, caller, job_id)
        if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise Conflict(
                f"job {job_id} is {job.status}: only a failed or cancelled job can be retried"
            )
        submission.check_quota(session, settings, job.tenant)
        reopened = scheduling.reopen(
            session=session, job_id=job_id, aging_seconds=settings.aging_seconds_per_priority
        )
        if reopened is None:  # it changed under us (deleted or retried meanwhile)
            raise Conflict(f"job {job_id} is no longer failed or cancelled")
        return reopened

    job = await access.run(reopen, commit=True)
    document = await submission.announced(job)
    await run_in_threadpool(
        events.publish_status, settings, job_id, status=str(job.status), attempt=job.attempt
    )
    return Response(document, media_type="application/json")


@router.post(
    "/{job_id}/clone",
    status_code=201,
    response_model=SubmittedJobOut,
    responses={**_ERRORS, **errors(s429="The tenant's quota of active jobs is used up")},
)
async def clone_job(
    job_id: uuid.UUID, body: CloneIn, settings: SettingsDep, access: AccessDep
) -> SubmittedJobOut:
    """A new job from this job's spec with `overrides` applied (a JSON merge patch), checked
    exactly as `POST /jobs` checks a spec. The clone's own webhooks (`notify.webhooks`, new
    subscriptions) come back with their signing secrets, in this response only."""
    source = await access.run(lambda s, c: load_job(s, c, job_id).spec)
    merged = merge_patch(source, body.overrides)
    try:
        spec = JobSpec.model_validate(merged)
    except pydantic.ValidationError as exc:
        raise SpecInvalid(
            [
                Problem(tuple(e["loc"]), e["msg"], e["type"])
                for e in exc.errors(include_url=False, include_input=False)
            ]
        ) from exc
    stored_spec, _, parameters = await validated(spec, settings, access)
    job, hooks = await submission.create(access, settings, stored_spec, None)
    return SubmittedJobOut.created(await submission.announced(job), hooks, parameters)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch. Hand-written: it is these few lines, and the libraries
    that implement it add nothing the service needs."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
