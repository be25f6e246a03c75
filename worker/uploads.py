"""Checkpoints to the artifact store, off the training process
(docs/architecture.md, "The artifact store").

Two sides of one handoff directory, `{job dir}/.uploads/`:

- the training child (its callback's `on_save`, rank 0) hard-links the checkpoint the Trainer
  has just written whole into `.uploads/checkpoint-N/` (through a staging name and a rename:
  a handoff is whole or absent) with `checkpoint-N.json` beside it (`save_total_limit` and
  the best checkpoint). Links cost no copy and survive the Trainer's rotation, which removes
  its own names only. This is the whole of the training thread's part: no hashing, no
  network, never a wait on the store;
- the supervisor's `Uploader` thread (in the worker, which alone holds the store's
  credentials) uploads the newest handoff: every file, then the manifest (sizes, sha256)
  last, which marks it complete; then applies `save_total_limit` in the store.

When uploads fall behind (a slow or unreachable store), the newest checkpoint wins: a
handoff that a newer one overtakes before its upload started is dropped, and an upload
that fails is retried (with backoff) only while no newer handoff waits. Training never waits,
local disk holds at most the checkpoint being uploaded and the newest, and the store catches
up with the newest checkpoint as soon as it answers again. A checkpoint dropped this way is
not in the store; every checkpoint the store calls complete is whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from traindepot import artifacts
from traindepot.store import ArtifactStore

log = logging.getLogger(__name__)

HANDOFF_DIR = ".uploads"
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 5.0


def handoff_dir(job_dir: Path) -> Path:
    return job_dir / HANDOFF_DIR


def hand_off(
    checkpoint: Path, job_dir: Path, *, save_total_limit: int | None, best: str | None
) -> Path:
    """The child's side: link the whole checkpoint into the handoff directory."""
    root = handoff_dir(job_dir)
    staging = root / f".{checkpoint.name}.linking"
    final = root / checkpoint.name
    shutil.rmtree(staging, ignore_errors=True)
    for dirpath, _, filenames in os.walk(checkpoint):
        here = Path(dirpath)
        target = staging / here.relative_to(checkpoint)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            os.link(here / name, target / name)
    shutil.rmtree(final, ignore_errors=True)
    meta = {"save_total_limit": save_total_limit, "best": Path(best).name if best else None}
    (root / f"{checkpoint.name}.json").write_text(json.dumps(meta))
    staging.rename(final)
    return final


def _ready(root: Path) -> list[tuple[int, Path]]:
    """Handoffs whose directory and description are both there, by step."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = artifacts.CHECKPOINT.match(entry.name)
        if match and entry.is_dir() and entry.with_name(f"{entry.name}.json").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _drop(handoff: Path) -> None:
    shutil.rmtree(handoff, ignore_errors=True)
    handoff.with_name(f"{handoff.name}.json").unlink(missing_ok=True)


def apply_limit(
    store: ArtifactStore, job_id: object, newest: int, limit: int | None, best: str | None
) -> None:
    """`save_total_limit` in the store: of the checkpoints before `newest`, keep the newest
    complete ones (`limit` in all with `newest`) and the best; remove the rest, the
    incomplete leftovers of a failed upload included. Nothing after `newest` is touched."""
    complete = [c.name for c in store.complete_checkpoints(job_id)]
    keep = set(complete[-limit:]) if limit else set(complete)
    keep.add(f"checkpoint-{newest}")
    if best:
        keep.add(best)
    for name in store.checkpoint_names(job_id):
        step = int(name.rsplit("-", 1)[1])
        if step < newest and name not in keep:
            store.remove_checkpoint(job_id, name)


class Uploader:
    """The supervisor's side (module docstring): one thread per attempt."""

    def __init__(self, store: ArtifactStore, job_id: object, job_dir: Path) -> None:
        self.store = store
        self.job_id = job_id
        self.root = handoff_dir(job_dir)
        self.uploaded: list[int] = []  # steps, in upload order
        self.last_error: str | None = None
        self._draining = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uploads-{job_id}", daemon=True)

    def start(self) -> Uploader:
        self._thread.start()
        return self

    def pending(self) -> bool:
        return bool(_ready(self.root))

    def drain(self, timeout: float) -> bool:
        """Upload what is waiting, then stop; False if something is still waiting after
        `timeout` (the store is down)."""
        self._draining.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stopped.set()
            return False
        return not self.pending()

    def stop(self) -> None:
        """Stop now, uploading nothing more (the attempt lost its lease)."""
        self._stopped.set()
        self._thread.join(30)

    def _run(self) -> None:
        wait = _BACKOFF_FIRST
        while not self._stopped.is_set():
            ready = _ready(self.root)
            for _, older in ready[:-1]:  # overtaken: the newest wins
                log.info("job %s: %s overtaken before its upload; dropped", self.job_id, older.name)
                _drop(older)
            if not ready:
                if self._draining.is_set():
                    return
                self._stopped.wait(0.2)
                continue
            step, handoff = ready[-1]
            try:
                self._upload(step, handoff)
            except Exception as exc:  # the store is unreachable or refused: try again later
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("job %s: upload of %s failed (%s)", self.job_id, handoff.name, exc)
                self._stopped.wait(wait)
                wait = min(wait * 2, _BACKOFF_MAX)
                continue
            wait = _BACKOFF_FIRST
            self.uploaded.append(step)
            _drop(handoff)

    def _upload(self, step: int, handoff: Path) -> None:
        meta: dict[str, Any] = json.loads(handoff.with_name(f"{handoff.name}.json").read_text())
        started = time.monotonic()
        manifest = self.store.put_directory(
            handoff, self.job_id, f"{artifacts.OUTPUT_DIR}/{handoff.name}"
        )
        apply_limit(self.store, self.job_id, step, meta.get("save_total_limit"), meta.get("best"))
        log.info(
            "job %s: %s uploaded (%d bytes, %.2f s)",
            self.job_id,
            handoff.name,
            manifest["total_bytes"],
            time.monotonic() - started,
        )
