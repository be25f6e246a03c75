"""What a job produced, and deleting a finished job: its final model, its checkpoints, one
file (with `ETag` and `Range`), the whole model as a streamed tar
(docs/architecture.md, "Artifacts and retention").

The job row is read (and scoped to the caller: another tenant's job is a 404) in the
database thread; the files are read in a thread of their own: from the artifact store when
there is one (traindepot/store.py; `?redirect=true` answers a presigned URL instead), else
from the job's directory under `TRAINDEPOT_HOME`, which the API then shares with the
workers.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
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
from traindepot import artifacts, log_stream
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings
from traindepot.statuses import JobStatus
from traindepot.store import ArtifactStore, answering, open_store

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


def _stored_listing(
    job_id: uuid.UUID, store: ArtifactStore, evals: dict[int, dict[str, Any]]
) -> ArtifactsOut:
    """`_listing` from the store: the final model's manifest, and the checkpoints the store
    has whole (the uploads in progress are not listed)."""

    def files(prefix: str, manifest: dict[str, Any]) -> list[ArtifactFile]:
        listed = [
            ArtifactFile(path=f"{prefix}/{f['path']}", size=f["size"], sha256=f["sha256"])
            for f in manifest["files"]
        ]
        size = len(json.dumps(manifest, indent=1))  # as written (artifacts.write_manifest)
        return [*listed, ArtifactFile(path=f"{prefix}/{artifacts.MANIFEST}", size=size)]

    model = None
    manifest = store.read_json(job_id, f"{artifacts.MODEL_DIR}/{artifacts.MANIFEST}")
    if manifest is not None:
        listed = files(artifacts.MODEL_DIR, manifest)
        model = ModelArtifacts(files=listed, total_bytes=sum(f.size for f in listed))
    state = store.read_json(job_id, f"{artifacts.MODEL_DIR}/trainer_state.json") or {}
    best, metric = state.get("best_model_checkpoint"), state.get("best_metric")
    checkpoints = []
    for stored in store.complete_checkpoints(job_id):
        listed = files(f"{artifacts.OUTPUT_DIR}/{stored.name}", stored.manifest)
        checkpoints.append(
            CheckpointArtifacts(
                step=stored.step,
                path=f"{artifacts.OUTPUT_DIR}/{stored.name}",
                files=listed,
                total_bytes=sum(f.size for f in listed),
                metrics=evals.get(stored.step),
            )
        )
    return ArtifactsOut(
        job_id=job_id,
        model=model,
        best_checkpoint=f"{artifacts.OUTPUT_DIR}/{Path(best).name}"
        if isinstance(best, str)
        else None,
        best_metric=float(metric) if isinstance(metric, int | float) else None,
        checkpoints=checkpoints,
    )


@router.get("/{job_id}/artifacts", response_model=ArtifactsOut, responses=_ERRORS)
async def list_artifacts(job_id: uuid.UUID, settings: SettingsDep, access: AccessDep) -> Response:
    """The final model's files (size, sha256) and every checkpoint (step, files, sizes, the
    evaluation logged at its step)."""

    def read(session: Session, caller: Caller) -> dict[int, dict[str, Any]]:
        load_job(session, caller, job_id)
        return jobs.eval_points(session=session, job_id=job_id)

    evals = await access.run(read)
    store = open_store(settings)
    if store is not None:
        listing = await run_in_threadpool(answering(_stored_listing), job_id, store, evals)
    else:
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
    job_id: uuid.UUID,
    path: str,
    request: Request,
    settings: SettingsDep,
    access: AccessDep,
    redirect: Annotated[
        bool,
        Query(
            description="With an artifact store that signs URLs (S3): answer 307 to a"
            " presigned URL, valid `artifacts_redirect_seconds`, that downloads the file"
            " without the API"
        ),
    ] = False,
) -> Response:
    """One file of the final model (`model/...`) or of a checkpoint (`output/checkpoint-N/
    ...`). Answers `Range` requests (206) so that a broken download resumes, and `If-Range`
    with its `ETag`. `..`, absolute paths and anything outside those two directories are
    refused (422); a symlink that leads out of them is a 404."""
    await access.run(lambda session, caller: load_job(session, caller, job_id))
    store = open_store(settings)
    if store is not None or redirect:
        return await _stored_artifact(job_id, path, request, store, settings, redirect)
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
    refused = _ranges(value, path.stat().st_size)
    return refused if isinstance(refused, JSONResponse) else None


def _ranges(value: str, size: int) -> list[tuple[int, int]] | JSONResponse:
    """The byte ranges (start, end exclusive) of a `Range` header, by Starlette's parser,
    or the JSON answer that refuses it."""
    try:
        return FileResponse._parse_range_header(value, size)
    except MalformedRangeHeader as exc:
        return JSONResponse({"error": "invalid_range", "detail": exc.content}, 400)
    except RangeNotSatisfiable:
        return JSONResponse(
            {"error": "range_not_satisfiable", "detail": f"the file has {size} bytes"},
            416,
            headers={"Content-Range": f"bytes */{size}"},
        )


def _stored_etag(store: ArtifactStore, job_id: uuid.UUID, relative: str) -> str | None:
    """A file's sha256 from the manifest of its directory (the model, or its checkpoint)."""
    parts = relative.split("/")
    depth = 1 if parts[0] == artifacts.MODEL_DIR else 2
    if len(parts) <= depth:
        return None
    base, name = "/".join(parts[:depth]), "/".join(parts[depth:])
    manifest = store.read_json(job_id, f"{base}/{artifacts.MANIFEST}") or {}
    found = next((f["sha256"] for f in manifest.get("files", []) if f["path"] == name), None)
    return f'"{found}"' if found else None


async def _stored_artifact(
    job_id: uuid.UUID,
    path: str,
    request: Request,
    store: ArtifactStore | None,
    settings: Settings,
    redirect: bool,
) -> Response:
    """`get_artifact` from the store: one ranged read of at most 1 MiB at a time, so memory
    stays flat whatever the file's size; `redirect`: a presigned URL instead."""
    try:
        artifacts.check_relative(path)
    except artifacts.UnsafePath as exc:
        raise SpecInvalid([Problem(("path",), str(exc), "unsafe_path")]) from exc
    if store is None:
        raise SpecInvalid(
            [Problem(("redirect",), "no artifact store is configured to sign URLs", "no_store")]
        )

    def locate() -> tuple[int, str | None]:
        return store.size(job_id, path), _stored_etag(store, job_id, path)

    try:
        size, etag = await run_in_threadpool(answering(locate))
    except artifacts.NoSuchArtifact as exc:
        raise NotFound(f"artifact {path!r} of job {job_id}") from exc
    if redirect:
        try:
            url = await run_in_threadpool(
                answering(store.presigned), job_id, path, settings.artifacts_redirect_seconds
            )
        except NotImplementedError as exc:
            problem = Problem(("redirect",), "the artifact store cannot sign URLs", "no_signing")
            raise SpecInvalid([problem]) from exc
        return RedirectResponse(url, status_code=307)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{PurePosixPath(path).name}"',
    }
    if etag:
        headers["ETag"] = etag
    start, end, status = 0, size, 200
    value = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if value is not None and (if_range is None or if_range == etag):
        ranges = _ranges(value, size)
        if isinstance(ranges, JSONResponse):
            return ranges
        if len(ranges) == 1:  # several ranges: the whole file (a server may ignore Range)
            (start, end), status = ranges[0], 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(
        store.read_range(job_id, path, start, end),
        status_code=status,
        media_type="application/octet-stream",
        headers=headers,
    )


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
    store = open_store(settings)

    def archive() -> artifacts.TarStream | None:
        if store is not None:
            return store.model_tar(job_id)
        if not (directory / artifacts.MANIFEST).is_file():
            return None
        return artifacts.tar_stream(directory, artifacts.MODEL_DIR)

    stream = await run_in_threadpool(answering(archive))
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
    await run_in_threadpool(answering(remove_everywhere), settings, job_id)
    deleted = await access.run(
        lambda session, caller: jobs.delete_finished(session=session, job_id=job_id),
        commit=True,
    )
    if not deleted:  # deleted by a concurrent request in between
        raise NotFound(f"job {job_id}")
    return Response(status_code=204)


def remove_everywhere(settings: Settings, job_id: uuid.UUID) -> None:
    """A job's files: in the store (and its log stream) when there is one, and locally."""
    store = open_store(settings)
    if store is not None:
        store.remove(job_id)
        if settings.redis_url:
            log_stream.forget(settings.redis_url, job_id)
    artifacts.remove_job_files(settings.job_dir(job_id))
