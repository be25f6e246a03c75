"""Hyperparameter sweeps (docs/architecture.md, "Sweeps"): submit one, read it with its
trials and best trial, follow it, cancel it, download its best model, retrain with its best
parameters."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import job_docs, stream_slots, submission
from api.access import Access, AccessDep, Caller
from api.deps import SettingsDep
from api.errors import Conflict, NotFound
from api.responses import JOB_ROUTE, errors
from api.routes.artifacts import get_model_tar
from api.routes.jobs import validated
from api.schemas import json_response
from api.sweep_schemas import SweepOut
from api.webhook_schemas import SubmittedJobOut
from db import studies, sweeps, tenants
from db.models import Sweep
from traindepot import dispatch as capabilities
from traindepot import events
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.sweeps import SweepSpec, space_problems, specs_to_check
from traindepot.validation import check_spec

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
_ERRORS = errors(*JOB_ROUTE)


def _rooted(prefix: tuple[str | int, ...], exc: Exception) -> list[Problem]:
    """A job spec's problems, named from the sweep's body."""
    if isinstance(exc, SpecInvalid):
        return [Problem((*prefix, *p.loc), p.msg, p.type) for p in exc.problems]
    assert isinstance(exc, pydantic.ValidationError)
    return [
        Problem((*prefix, *e["loc"]), e["msg"], e["type"])
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _check_job_spec(data: dict[str, Any], settings: Settings) -> dict[str, Any]:
    spec = JobSpec.model_validate(data)
    devices = (
        capabilities.live_workers(redis_url=settings.redis_url, queue=spec.queue)
        if settings.redis_url
        else None
    )
    return check_spec(spec, settings, devices=devices, job_exists=lambda _: True)


def check_sweep(sweep: SweepSpec, settings: Settings) -> None:
    """The base spec validated once, then every value the space can produce at its ends, as
    the job spec a trial would run (traindepot/sweeps.py `specs_to_check`); each problem
    names its path. Raises SpecInvalid."""
    try:
        effective = _check_job_spec(sweep.base, settings)
    except (SpecInvalid, pydantic.ValidationError) as exc:
        raise SpecInvalid(_rooted(("base",), exc)) from exc
    problems = space_problems(sweep)
    if effective.get("eval_strategy", "no") == "no":
        problems.append(
            Problem(
                ("objective", "metric"),
                "the base spec never evaluates: set `training_args.eval_strategy` (and "
                "evaluation data) so that each trial reports its objective",
                "no_evaluation",
            )
        )
    if problems:
        raise SpecInvalid(problems)
    seen: set[tuple[str | int, ...]] = set()
    for path, data in specs_to_check(sweep):
        try:
            _check_job_spec(data, settings)
        except (SpecInvalid, pydantic.ValidationError) as exc:
            for problem in _rooted((), exc):
                loc = ("search_space", path) if path else ("search_space",)
                where = ".".join(map(str, problem.loc))
                if (*loc, where) not in seen:
                    seen.add((*loc, where))
                    problems.append(Problem(loc, f"{where}: {problem.msg}", problem.type))
        except ValueError as exc:  # a path through a value that is not a section
            problems.append(Problem(("search_space", path), str(exc), "path_invalid"))
    if problems:
        raise SpecInvalid(problems)


def _running_quota(session: Session, caller: Caller, settings: Settings) -> int:
    default = tenants.Quota(
        settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
    )
    return tenants.quota(session=session, tenant=caller.tenant, default=default).max_running_jobs


@router.post("", status_code=201, response_model=SweepOut, responses=_ERRORS)
async def submit_sweep(sweep: SweepSpec, settings: SettingsDep, access: AccessDep) -> Response:
    """Validate the sweep (the base spec, and every value its space can produce as a job
    spec), store it and its study, and queue its first trials. `max_concurrent_trials`
    may not exceed the tenant's running quota."""
    await access.who()
    limit = await access.run(lambda s, c: _running_quota(s, c, settings))
    if sweep.max_concurrent_trials > limit:
        raise SpecInvalid(
            [
                Problem(
                    ("max_concurrent_trials",),
                    f"{sweep.max_concurrent_trials} is over the tenant's running quota "
                    f"({limit} jobs at once)",
                    "over_quota",
                )
            ]
        )
    await run_in_threadpool(check_sweep, sweep, settings)

    def store(session: Session, caller: Caller) -> uuid.UUID:
        row = sweeps.create(
            session=session, sweep=sweep, tenant=caller.tenant, submitted_by=caller.key_id
        )
        return row.id

    sweep_id = await access.run(store, commit=True)
    await run_in_threadpool(studies.create, sweep_id, sweep)
    await run_in_threadpool(sweeps.drive, settings, sweep_id)
    response = json_response(await _document(access, sweep_id), 201)
    response.headers["Location"] = f"/sweeps/{sweep_id}"
    return response


def _load(session: Session, caller: Caller, sweep_id: uuid.UUID) -> Sweep:
    row = sweeps.get(session=session, sweep_id=sweep_id, tenant=caller.scope)
    if row is None:
        raise NotFound(f"sweep {sweep_id}")
    return row


async def _document(access: Access, sweep_id: uuid.UUID) -> SweepOut:
    def read(session: Session, caller: Caller) -> SweepOut:
        row = _load(session, caller, sweep_id)
        trial_jobs = sweeps.trial_jobs(session=session, sweep_id=sweep_id)
        return SweepOut.of(row, trial_jobs, sweeps.study_trials(sweep_id))

    return await access.run(read)


@router.get("/{sweep_id}", response_model=SweepOut, responses=_ERRORS)
async def get_sweep(sweep_id: uuid.UUID, access: AccessDep) -> Response:
    """The sweep: its status, its trials (parameters, state, objective, job), its best trial
    so far and where its model is."""
    return json_response(await _document(access, sweep_id))


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepOut,
    responses={**_ERRORS, **errors(s409="The sweep has already ended")},
)
async def cancel_sweep(sweep_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """No trial is asked any more; queued trials are cancelled at once, running ones stop
    at their next step (`cancelling`). The sweep ends `cancelled` once every trial ended."""

    def cancel(session: Session, caller: Caller) -> list[tuple[uuid.UUID, str, int]]:
        row = _load(session, caller, sweep_id)
        if row.status != "running":
            raise Conflict(f"sweep {sweep_id} is already {row.status}")
        changed = sweeps.request_cancel(session=session, sweep_id=sweep_id, by=caller.key_id)
        return [(j.id, str(j.status), j.attempt) for j in changed]

    changed = await access.run(cancel, commit=True)
    for job_id, status, attempt in changed:
        await run_in_threadpool(
            events.publish_status, settings, job_id, status=status, attempt=attempt
        )
    await run_in_threadpool(sweeps.drive, settings, sweep_id)  # tells the cancelled ones
    return json_response(await _document(access, sweep_id))


async def _best_job(access: Access, sweep_id: uuid.UUID) -> uuid.UUID:
    doc = await _document(access, sweep_id)
    if doc.best is None or doc.best.job_id is None:
        raise NotFound(f"a completed trial of sweep {sweep_id}")
    return doc.best.job_id


@router.get(
    "/{sweep_id}/model.tar",
    responses={**_ERRORS, 200: {"content": {"application/x-tar": {}}, "description": "model/"}},
)
async def get_best_model(sweep_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """The best trial's exported model (its best checkpoint's weights when the base spec
    sets `load_best_model_at_end`), as `GET /jobs/{id}/model.tar` serves it."""
    return await get_model_tar(await _best_job(access, sweep_id), settings, access)


@router.post(
    "/{sweep_id}/retrain",
    status_code=201,
    response_model=SubmittedJobOut,
    responses={**_ERRORS, **errors(s429="The tenant's quota of active jobs is used up")},
)
async def retrain_best(sweep_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """A new job (not a trial) with the base spec and the best trial's parameters."""
    best_job = await _best_job(access, sweep_id)

    def source(session: Session, caller: Caller) -> dict[str, Any]:
        row = _load(session, caller, sweep_id)
        trial = sweeps.trial_jobs(session=session, sweep_id=sweep_id)
        spec = next(j.spec for j in trial if j.id == best_job)
        data = copy.deepcopy(spec)
        data["name"] = f"{row.name}-best"[:200]
        tags = {k: v for k, v in (data.get("tags") or {}).items() if k not in ("sweep", "trial")}
        data["tags"] = {**tags, "retrained_from_sweep": str(sweep_id)}
        return data

    data = await access.run(source)
    stored_spec, _, parameters = await validated(JobSpec.model_validate(data), settings, access)
    job, hooks = await submission.create(access, settings, stored_spec, None)
    await submission.announce(job)
    body = SubmittedJobOut.created(await job_docs.document(job.id), hooks, parameters)
    response = json_response(body, 201)
    response.headers["Location"] = f"/jobs/{job.id}"
    return response


async def _changes(
    access: Access, sweep_id: uuid.UUID, request: Request, interval: float
) -> AsyncIterator[ServerSentEvent]:
    """The sweep's document each time it changes (a trial asked, started, reported an
    evaluation, told; the sweep's status), read every `interval` seconds; ends with it."""
    last = ""
    version = 0
    while not await request.is_disconnected():
        doc = await _document(access, sweep_id)
        body = doc.model_dump_json()
        if body != last:
            last = body
            version += 1
            yield ServerSentEvent(data=body, event="sweep", id=str(version))
        if doc.status in ("succeeded", "cancelled"):
            yield ServerSentEvent(data=json.dumps({"status": doc.status}), event="end")
            return
        await asyncio.sleep(interval)


@router.get(
    "/{sweep_id}/events",
    response_class=EventSourceResponse,
    responses={
        **_ERRORS,
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `sweep` (the whole document, at each change) "
            "and a last `end`.",
        },
    },
)
async def sweep_events(sweep_id: uuid.UUID, request: Request, access: AccessDep) -> Response:
    """The sweep's changes as they happen: its document (as `GET /sweeps/{id}`) whenever it
    differs from the last one sent, polled each second; the stream closes when it ends."""
    await _document(access, sweep_id)  # 404 before the stream starts
    stream_slots.take(request, (await access.who()).tenant)
    return EventSourceResponse(
        _changes(access, sweep_id, request, 1.0),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
