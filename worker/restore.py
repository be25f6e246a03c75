"""What a worker keeps locally of the artifact store: the checkpoint an attempt resumes from,
downloaded before its child starts, and the bound on local copies
(docs/architecture.md, "The artifact store").

An attempt that resumes (a restarted one, `resume_from_checkpoint: true`, or
`resume_from_checkpoint: <job id>`) may run on a worker that lacks the files, or holds
older ones than the store. Before its child starts, the supervisor downloads the store's
newest complete checkpoint of that job when it is newer than the newest whole local one,
each file checked against its manifest's sha256 (one that fails is skipped for the one
before it). The child then finds it where it always looks (worker/runner.py,
worker/checkpoints.py), and never reads the store itself.

Local copies of jobs that no longer run here are a cache of the store: the least recently
touched go first once they pass `artifacts_cache_bytes`.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import uuid
from pathlib import Path
from typing import BinaryIO

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from traindepot import artifacts
from traindepot.settings import Settings
from traindepot.store import ArtifactStore, StoreError
from worker import checkpoints
from worker.uploads import handoff_dir

log = logging.getLogger(__name__)

# The jobs this worker process supervises now: their directories are never evicted. Each
# also holds a shared lock on `{job dir}/.held`, so that another worker process on the same
# home never evicts it either.
_active: dict[str, BinaryIO] = {}
_active_lock = threading.Lock()
HELD = ".held"


def _step(path: Path | None) -> int:
    return -1 if path is None else int(path.name.rsplit("-", 1)[1])


def newest_into(store: ArtifactStore, job_id: object, output: Path, ranks: int = 1) -> Path | None:
    """Download the job's newest complete stored checkpoint into `output` if it is newer
    than the newest whole one there; the checkpoint the child will find, or None."""
    local = checkpoints.last_complete(output, ranks)
    for stored in reversed(store.complete_checkpoints(job_id)):
        if stored.step <= _step(local):
            break
        try:
            found = store.download_checkpoint(job_id, stored, output)
        except StoreError as exc:
            log.warning("job %s: %s not usable (%s)", job_id, stored.name, exc)
            continue
        log.info("job %s: %s downloaded from the store", job_id, stored.name)
        return found
    return local


def restore(
    store: ArtifactStore,
    settings: Settings,
    *,
    job_id: uuid.UUID,
    attempt: int,
    resume_from_checkpoint: object,
    ranks: int = 1,
    patience_seconds: float = 60.0,
) -> None:
    """Bring the checkpoint this attempt resumes from into the local directories (module
    docstring). A store still unreachable after `patience_seconds` is given up on: the child
    then resumes from what it has (or the job that names another fails with a clear error)."""
    wanted: list[object] = []
    if attempt > 1 or resume_from_checkpoint is True:
        wanted.append(job_id)
    if isinstance(resume_from_checkpoint, str):
        wanted.append(uuid.UUID(resume_from_checkpoint))
    for source in wanted:
        output = settings.job_dir(source) / artifacts.OUTPUT_DIR
        output.mkdir(parents=True, exist_ok=True)
        try:
            for attempt_call in Retrying(
                # Any failure: a store that does not answer raises the client library's
                # own errors (botocore's EndpointConnectionError is no OSError).
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential(multiplier=0.5, max=5),
                stop=stop_after_delay(patience_seconds),
                reraise=True,
            ):
                with attempt_call:
                    newest_into(store, source, output, ranks)
        except Exception as exc:  # the child then starts from what this worker has
            log.warning(
                "job %s: the store's checkpoints of %s unreachable (%s)", job_id, source, exc
            )


def hold(job_id: object, job_dir: Path) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    held = (job_dir / HELD).open("ab")
    fcntl.flock(held, fcntl.LOCK_SH)
    with _active_lock:
        _active[str(job_id)] = held


def release(job_id: object) -> None:
    with _active_lock:
        held = _active.pop(str(job_id), None)
    if held is not None:
        held.close()  # and its lock


def _held_elsewhere(job_dir: Path) -> bool:
    try:
        with (job_dir / HELD).open("ab") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
    except OSError:
        return False
    return False


def trim_cache(settings: Settings) -> int:
    """Remove the least recently touched local job directories, of jobs that do not run in
    this process and have no upload waiting, until the rest fits `artifacts_cache_bytes`.
    The bytes freed."""
    jobs_dir = settings.jobs_dir
    if not jobs_dir.is_dir():
        return 0
    with _active_lock:
        active = set(_active)
    candidates = [
        entry
        for entry in jobs_dir.iterdir()
        if entry.is_dir()
        and entry.name not in active
        and not _uploads_waiting(entry)
        and not _held_elsewhere(entry)
    ]
    sizes = {entry: artifacts.disk_usage(entry) for entry in candidates}
    total = sum(sizes.values())
    freed = 0
    for entry in sorted(candidates, key=lambda e: e.stat().st_mtime):
        if total - freed <= settings.artifacts_cache_bytes:
            break
        shutil.rmtree(entry, ignore_errors=True)
        freed += sizes[entry]
    return freed


def _uploads_waiting(job_dir: Path) -> bool:
    root = handoff_dir(job_dir)
    return root.is_dir() and any(root.iterdir())
