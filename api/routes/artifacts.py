"""What a job produced, and deleting a finished job: its final model, its checkpoints, one
file (with `ETag` and `Range`), the whole model as a streamed tar
(docs/architecture.md, "Artifacts and retention").

The job row is read (and scoped to the caller: another tenant's job is a 404) in the
database thread; the files are read from the job's directory under `TRAINDEPOT_HOME`, which
the API shares with the workers, in a thread of their own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from api.access import AccessDep, Caller, load_job
from api.deps import SettingsDep
from api.errors import Conflict, NotFound
from api.responses import errors
from api.schemas import (
    ArtifactFile,
    ArtifactsOut,
    CheckpointArtifacts,
    ModelArtifacts,
)
from db import jobs
from traindepot import artifacts
from traindepot.problems import Problem, SpecInvalid
from traindepot.statuses import JobStatus

router = APIRouter(prefix="/jobs", tags=["artifacts"])

_ERRORS = errors(401, 422, 503, s404="No such job, or no such file of it")


def _best(job_dir: Path) -> tuple[str | None, float | None]:
    """The best checkpoint (relative to the job) and its metric, from the final model's
    trainer_state.json (the Trainer records them with `load_best_model_at_end`)."""
    try:
        state = json.loads((artifacts.model_dir(job_dir) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None, None
    best = state.get("best_model_checkpoint")
    metric = state.get("best_metric")
    where = f"{artifacts.OUTPUT_DIR}/{Path(best).name}" if isinstance(best, str) else None
    return where, float(metric) if isinstance(metric, int | float) else None


def _listing(job_id: uuid.UUID, job_dir: Path, evals: dict[int, dict[str, Any]]) -> ArtifactsOut:
    manifest = artifacts.read_manifest(job_dir)
    model = None
    if manifest is not None:
        files = [
            ArtifactFile(
                path=f"{artifacts.MODEL_DIR}/{f['path']}", size=f["size"], sha256=f["sha256"]
            )
            for f in manifest["files"]
        ]
        try:
            size = (artifacts.model_dir(job_dir) / artifacts.MANIFEST).stat().st_size
        except OSError:  # removed since it was read (a DELETE in between)
            size = 0
        files.append(ArtifactFile(path=f"{artifacts.MODEL_DIR}/{artifacts.MANIFEST}", size=size))
        model = ModelArtifacts(files=files, total_bytes=sum(f.size for f in files))
    best, best_metric = _best(job_dir)
    return ArtifactsOut(
        job_id=job_id,
        model=model,
        best_checkpoint=best,
        best_metric=best_metric,
        checkpoints=[
            CheckpointArtifacts(
                step=c.step,
                path=c.path.as_posix(),
                files=[ArtifactFile(path=f["path"], size=f["size"]) for f in c.files],
                total_bytes=sum(int(f["size"]) for f in c.files),
                metrics=evals.get(c.step),
            )
            for c in artifacts.checkpoints(job_dir)
        ],
    )


@router.get("/{job_id}/artifacts", response_model=ArtifactsOut, responses=_ERRORS)
async def list_artifacts(job_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """The final model's files (size, sha256) and every checkpoint (step, files, sizes, the
    evaluation logged at its step)."""

    def read(session: Session, caller: Caller) -> dict[int, dict[str, Any]]:
        load_job(session, caller, job_id)
        return jobs.eval_points(session=session, job_id=job_id)

    evals = await access.run(read)
    listing = await run_in_threadpool(_listing, job_id, settings.job_dir(job_id), evals)
    return Response(listing.model_dump_json(), media_type="application/json")


def _etag(job_dir: Path, relative: str) -> str | None:
    """A final-model file's ETag is its sha256 from the manifest; a checkpoint file gets
    Starlette's (modification time and size)."""
    manifest = artifacts.read_manifest(job_dir)
    prefix = f"{artifacts.MODEL_DIR}/"
    if manifest is None or not relative.startswith(prefix):
        return None
    name = relative[len(prefix) :]
    found = next((f["sha256"] for f in manifest["files"] if f["path"] == name), None)
    return f'"{found}"' if found else None


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={
        **_ERRORS,
        200: {"content": {"application/octet-stream": {}}, "description": "The file"},
        206: {"description": "The requested byte range (`Range: bytes=N-`)"},
    },
)
async def get_artifact(
    job_id: uuid.UUID, path: str, request: Request, settings: SettingsDep, access: AccessDep
) -> Response:
    """One file of the final model (`model/...`) or of a checkpoint (`output/checkpoint-N/
    ...`). Answers `Range` requests (206) so that a broken download resumes, and `If-Range`
    with its `ETag`. `..`, absolute paths and anything outside those two directories are
    refused (422); a symlink that leads out of them is a 404."""
    await access.run(lambda session, caller: load_job(session, caller, job_id))
    job_dir = settings.job_dir(job_id)

    def locate() -> tuple[Path, str | None]:
        return artifacts.resolve_artifact(job_dir, path), _etag(job_dir, path)

    try:
        real, etag = await run_in_threadpool(locate)
    except artifacts.UnsafePath as exc:
        raise SpecInvalid([Problem(("path",), str(exc), "unsafe_path")]) from exc
    except artifacts.NoSuchArtifact as exc:
        raise NotFound(f"artifact {path!r} of job {job_id}") from exc
    refused = _bad_range(request.headers.get("range"), real)
    if refused is not None:
        return refused
    return FileResponse(
        real,
        filename=real.name,
        media_type="application/octet-stream",
        headers={"ETag": etag} if etag else None,
    )


def _bad_range(value: str | None, path: Path) -> JSONResponse | None:
    """A `Range` header Starlette would refuse, refused here as JSON like every error (400
    malformed, 416 past the end with `Content-Range: bytes */size`); None when it is fine."""
    if value is None:
        return None
    size = path.stat().st_size
    try:
        FileResponse._parse_range_header(value, size)
    except MalformedRangeHeader as exc:
        return JSONResponse({"error": "invalid_range", "detail": exc.content}, 400)
    except RangeNotSatisfiable:
        return JSONResponse(
            {"error": "range_not_satisfiable", "detail": f"the file has {size} bytes"},
            416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    return None


@router.get(
    "/{job_id}/model.tar",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"application/x-tar": {}}, "description": "model/"}},
)
async def get_model_tar(
    job_id: uuid.UUID, settings: SettingsDep, access: AccessDep
) -> StreamingResponse:
    """The whole final model directory as a tar (`model/...`), streamed as it is read: no
    archive is built on disk or in memory. `Content-Length` is known up front."""
    await access.run(lambda session, caller: load_job(session, caller, job_id))
    directory = artifacts.model_dir(settings.job_dir(job_id))

    def archive() -> artifacts.TarStream | None:
        if not (directory / artifacts.MANIFEST).is_file():
            return None
        return artifacts.tar_stream(directory, artifacts.MODEL_DIR)

    stream = await run_in_threadpool(archive)
    if stream is None:
        raise NotFound(f"the model of job {job_id}")
    return StreamingResponse(
        iter(stream),
        media_type="application/x-tar",
        headers={
            "Content-Length": str(stream.length),
            "Content-Disposition": f'attachment; filename="{job_id}-model.tar"',
        },
    )


@router.delete(
    "/{job_id}",
    status_code=204,
    responses={
        **_ERRORS,
        **errors(s409="The job has not finished"),
    },
)
async def delete_job(job_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """Delete a finished job: its files (model, checkpoints, log), its history (metrics,
    attempts) and the job itself; it answers 404 afterwards. A queued or running job is a
    409: cancel it first."""

    def check(session: Session, caller: Caller) -> None:
        job = load_job(session, caller, job_id)
        if not JobStatus(job.status).is_terminal:
            raise Conflict(f"job {job_id} is {job.status}: only a finished job can be deleted")

    await access.run(check)
    # Files first: a failure here leaves the row, and the DELETE can be sent again.
    await run_in_threadpool(artifacts.remove_job_files, settings.job_dir(job_id))
    deleted = await access.run(
        lambda session, caller: jobs.delete_finished(session=session, job_id=job_id),
        commit=True,
    )
    if not deleted:  # deleted by a concurrent request in between
        raise NotFound(f"job {job_id}")
    return Response(status_code=204)
