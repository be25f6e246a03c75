"""Hub sync, in the training child (docs/architecture.md, "Hub sync"): a job's `hub` pushes
its model to a Hugging Face Hub repository with `huggingface_hub` (`HfApi.create_repo`,
`upload_folder`, the calls Trainer's own `push_to_hub` makes), at the endpoint the worker's
`HF_ENDPOINT` names, with the tenant's token (`HF_TOKEN`, set by the supervisor in this
process's environment only).

The strategies are TrainingArguments' `hub_strategy`: `end` pushes the final model;
`every_save` also the model of each checkpoint; `checkpoint` also the whole checkpoint in
`last-checkpoint/` (a resume from the Hub is possible). Pushes run on a thread of their own,
never on the training thread: a save that finds a push still running hands over its
checkpoint and the newest waiting one wins.

A push that fails never fails the training. Its outcome is on the job, in
`progress.hub`: `status` (`pending`, `pushed` or `failed`), `last_error` (the endpoint
named, the token never), `last_commit`. A failed push is retried at the next save, and the
final push is tried `FINAL_TRIES` times before the job ends (once without a token).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from traindepot.spec import HubSync
from worker.callback import PointSink

log = logging.getLogger(__name__)

FINAL_TRIES = 3
# Not the model: what a checkpoint holds for resuming only.
_TRAINING_STATE = ["optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "*.bin"]


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


class HubPusher(TrainerCallback):
    def __init__(self, hub: HubSync, sink: PointSink, job_dir: Path) -> None:
        self.hub = hub
        self.sink = sink
        self.staging = job_dir / ".hub"
        self.endpoint = endpoint()
        self.token = os.environ.get("HF_TOKEN") or None
        self.state: dict[str, Any] = {
            "repo_id": hub.repo_id,
            "strategy": hub.strategy,
            "status": "pending",
            "last_error": None,
            "last_commit": None,
        }
        self._lock = threading.Lock()
        self._waiting: tuple[Path, int] | None = None
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._closed = False
        self._repo_made = False
        self._thread = threading.Thread(target=self._run, name="hub-push", daemon=True)
        self._thread.start()
        self._record()

    # --- the training thread ----------------------------------------------------------------
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.hub.strategy == "end" or not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir or "") / f"checkpoint-{state.global_step}"
        # A copy by hard links: the Trainer's rotation may remove the checkpoint meanwhile.
        linked = self.staging / checkpoint.name
        shutil.rmtree(linked, ignore_errors=True)
        shutil.copytree(checkpoint, linked, copy_function=os.link)
        with self._lock:
            if self._waiting is not None:
                shutil.rmtree(self._waiting[0], ignore_errors=True)
            self._waiting = (linked, state.global_step)
            self._wake.notify()

    def finish(self, model_dir: Path | None) -> None:
        """The final push (every strategy): the exported model, after any push in flight,
        tried `FINAL_TRIES` times (once when the job has no token)."""
        with self._lock:
            self._closed = True
            if self._waiting is not None:  # superseded by the final model
                shutil.rmtree(self._waiting[0], ignore_errors=True)
                self._waiting = None
            self._wake.notify()
        self._thread.join()
        if model_dir is not None:
            for attempt in range(FINAL_TRIES):
                if attempt:
                    time.sleep(2 ** (attempt - 1))  # 1 s, then 2 s
                pushed = self._push(model_dir, "", "Final model", ignore=["manifest.json"])
                if pushed or self.token is None:  # without a token a retry cannot help
                    break
        shutil.rmtree(self.staging, ignore_errors=True)

    # --- the push thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while self._waiting is None and not self._closed:
                    self._wake.wait()
                if self._waiting is None:
                    return
                linked, step = self._waiting
                self._waiting = None
            message = f"Training in progress, step {step}"
            if self._push(linked, "", message, ignore=_TRAINING_STATE) and (
                self.hub.strategy == "checkpoint"
            ):
                self._push(linked, "last-checkpoint", message, ignore=[])
            shutil.rmtree(linked, ignore_errors=True)

    def _push(self, folder: Path, path_in_repo: str, message: str, ignore: list[str]) -> bool:
        from huggingface_hub import HfApi

        if self.token is None:
            self.state.update(
                status="failed",
                last_error="the tenant has no hf_token secret (PUT /tenants/{t}/secrets/hf_token)",
            )
            self._record()
            return False
        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            if not self._repo_made:
                api.create_repo(self.hub.repo_id, private=self.hub.private, exist_ok=True)
                self._repo_made = True
            commit = api.upload_folder(
                repo_id=self.hub.repo_id,
                folder_path=folder,
                path_in_repo=path_in_repo or None,
                commit_message=message,
                ignore_patterns=ignore or None,
            )
        except Exception as exc:
            error = f"push to {self.endpoint} failed: {type(exc).__name__}: {exc}"
            if self.token:
                error = error.replace(self.token, "***")
            log.warning("hub: %s", error)
            self.state.update(status="failed", last_error=error[:2000])
            self._record()
            return False
        self.state.update(status="pushed", last_commit=commit.oid, last_error=None)
        log.info("hub: pushed %s to %s (%s)", message, self.hub.repo_id, commit.oid)
        self._record()
        return True

    def _record(self) -> None:
        self.sink.set_progress({"hub": dict(self.state)})
