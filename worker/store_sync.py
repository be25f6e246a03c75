"""One attempt's traffic with the artifact store, for its supervisor (docs/architecture.md,
"The artifact store"): before the child starts, the checkpoint it resumes from is
brought in (worker/restore.py), the checkpoint uploader (worker/uploads.py) and the live log
(traindepot/log_stream.py) start; after it exits, the last checkpoint, the model and the log
are uploaded before the job's status is written, so that whatever the API then says is
there, is in the store.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from traindepot import artifacts, log_stream
from traindepot.settings import Settings
from traindepot.store import ArtifactStore
from worker import restore
from worker.uploads import Uploader

log = logging.getLogger(__name__)


class AttemptStore:
    def __init__(
        self,
        store: ArtifactStore,
        settings: Settings,
        *,
        job_id: uuid.UUID,
        attempt: int,
        job_dir: Path,
        ranks: int,
        resume_from_checkpoint: object,
    ) -> None:
        self.store = store
        self.settings = settings
        self.job_id = job_id
        self.attempt = attempt
        self.job_dir = job_dir
        self.ranks = ranks
        self.resume_from_checkpoint = resume_from_checkpoint
        self.uploader = Uploader(store, job_id, job_dir)
        self.publisher: log_stream.LogPublisher | None = None

    def before_child(self, log_path: Path) -> None:
        restore.hold(self.job_id, self.job_dir)
        restore.trim_cache(self.settings)
        restore.restore(
            self.store,
            self.settings,
            job_id=self.job_id,
            attempt=self.attempt,
            resume_from_checkpoint=self.resume_from_checkpoint,
            ranks=self.ranks,
        )
        self.uploader.start()
        if self.settings.redis_url:
            offset = log_path.stat().st_size if log_path.exists() else 0
            self.publisher = log_stream.LogPublisher(
                self.settings.redis_url,
                self.job_id,
                log_path,
                offset=offset,
                max_chunks=self.settings.log_stream_max_chunks,
            ).start()

    def lost(self) -> None:
        """The attempt lost its lease: a newer one owns the job and its uploads."""
        self.uploader.stop()
        if self.publisher is not None:
            self.publisher.stop()
        restore.release(self.job_id)

    def after_child(self, log_path: Path) -> str | None:
        """Upload what the attempt leaves: its last checkpoint, its model, its log. None, or
        what could not be uploaded before `artifacts_upload_deadline_seconds`."""
        if self.publisher is not None:
            self.publisher.stop()
        seconds = self.settings.artifacts_upload_deadline_seconds
        deadline = time.monotonic() + seconds
        if not self.uploader.drain(seconds):
            return (
                f"checkpoints not uploaded to the artifact store within {seconds:g} s"
                " (artifacts_upload_deadline_seconds): "
                + (self.uploader.last_error or "the store did not answer")
            )
        model = artifacts.model_dir(self.job_dir)
        problem = self._until(
            deadline,
            "the model",
            lambda: (
                (model / artifacts.MANIFEST).is_file()
                and self.store.put_directory(model, self.job_id, artifacts.MODEL_DIR)
            ),
        )
        return problem or self._until(deadline, "the log", lambda: self._upload_log(log_path))

    def _upload_log(self, log_path: Path) -> None:
        whole = log_path.with_name(".train.log.whole")
        source = log_path
        if self.settings.redis_url:
            with whole.open("wb") as out:
                if log_stream.whole_log(self.settings.redis_url, self.job_id, out):
                    source = whole
        if source.is_file():
            self.store.put_file(source, self.job_id, "train.log")
        whole.unlink(missing_ok=True)

    def _until(self, deadline: float, what: str, upload: Any) -> str | None:
        wait = 0.5
        while True:
            try:
                upload()
                return None
            except Exception as exc:
                if time.monotonic() + wait > deadline:
                    return (
                        f"{what} not uploaded to the artifact store within"
                        f" {self.settings.artifacts_upload_deadline_seconds:g} s"
                        f" (artifacts_upload_deadline_seconds): {type(exc).__name__}: {exc}"
                    )
                log.warning("job %s: %s not uploaded yet (%s)", self.job_id, what, exc)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def ended(self, *, terminal: bool) -> None:
        if terminal and self.settings.redis_url:
            log_stream.expire(self.settings.redis_url, self.job_id)
        restore.release(self.job_id)
        restore.trim_cache(self.settings)


def store_error(problem: str) -> dict[str, Any]:
    """The job's error when its results could not reach the store."""
    return {
        "type": "ArtifactStoreError",
        "message": problem,
        "traceback": None,
        "reason": "internal",
    }
