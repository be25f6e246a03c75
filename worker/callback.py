"""The Trainer callback: turns Trainer events into points for the flusher, and stops
training cooperatively (cancel, time limit, non-finite loss, lost lease).

A training step does almost nothing here: `on_step_end` checks one flag; a logged step copies
the log dict into the flusher's buffer and checks two values for NaN. The one place the
training thread waits on the database is a step that saves a checkpoint: the points up to it
are committed first (`Flusher.flush_sync`, at most `checkpoint_flush_timeout`). The progress
snapshot (read from the Trainer's state), the JSON, the log line, Postgres and Redis are all
the flusher's work, on its own thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

# Keys of the end-of-training log (`Trainer` logs them once, with the TrainOutput metrics).
_SUMMARY_KEYS = frozenset({"train_runtime", "train_loss", "train_samples_per_second"})


class PointSink(Protocol):
    """Where the callback hands its points: the flusher (worker/flusher.py), or on a rank
    other than 0 of a multi-rank job a sink that writes nothing (worker/ranks.py)."""

    fenced: bool

    def add_point(
        self, *, step: int, kind: str, epoch: float | None, values: dict[str, Any]
    ) -> None: ...

    def set_progress(self, progress: dict[str, Any]) -> None: ...

    def watch_state(self, state: Any, *, samples_per_step: int) -> None: ...

    def flush_sync(self, timeout: float) -> bool: ...

    def close(self, timeout: float = 300.0) -> bool: ...


# (stop, fenced) of this rank -> of any rank (worker/ranks.py `agree`), on `args.device`.
Agreement = Callable[[tuple[bool, bool], Any], tuple[bool, bool]]


def point_kind(logs: dict[str, Any]) -> str:
    if any(key.startswith("eval_") for key in logs):
        return "eval"
    if _SUMMARY_KEYS & logs.keys():
        return "summary"
    return "train"


def non_finite(logs: dict[str, Any]) -> dict[str, Any]:
    """The loss / grad-norm values of a log that are NaN or infinite."""
    return {
        key: value
        for key in ("loss", "grad_norm")
        if isinstance(value := logs.get(key), float) and not math.isfinite(value)
    }


class TraindepotCallback(TrainerCallback):
    def __init__(
        self,
        flusher: PointSink,
        *,
        checkpoint_flush_timeout: float = 30.0,
        agree: Agreement | None = None,
    ) -> None:
        self.flusher = flusher
        # Several ranks: the stop is decided together, so all stop at the same step.
        self.agree = agree
        self.checkpoint_flush_timeout = checkpoint_flush_timeout
        # Set from a signal handler (cancel / time limit) or by the runner.
        self.stop_requested = threading.Event()
        self.non_finite_step: int | None = None
        self.non_finite_values: dict[str, Any] = {}
        self.train_begins = 0

    # Training starts (again, with `auto_find_batch_size` after an OOM).
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.train_begins += 1
        batch_size = state.train_batch_size or args.per_device_train_batch_size
        self.flusher.watch_state(
            state,
            samples_per_step=batch_size
            * max(args.gradient_accumulation_steps, 1)
            * max(args.world_size, 1),
        )
        if self.train_begins > 1:
            # `auto_find_batch_size` restarted the loop after an out-of-memory error: say so.
            self.flusher.add_point(
                step=state.global_step,
                kind="restart",
                epoch=state.epoch,
                values={
                    "reason": "oom",
                    "train_begin": self.train_begins,
                    # The batch size the loop restarts with (Trainer sets it on the state
                    # before this hook; the dataloader is not passed to on_train_begin).
                    "train_batch_size": state.train_batch_size,
                },
            )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # The only per-step work: the flusher reads the step progress from `state` itself.
        stop, fenced = self.stop_requested.is_set(), self.flusher.fenced
        if self.agree is not None:  # one small all-reduce per step (worker/ranks.py)
            stop, fenced = self.agree((stop, fenced), args.device)
            if stop:
                # Another rank's stop (another node's shutdown) is this rank's too: its
                # outcome says `stopped`, not `succeeded`.
                self.stop_requested.set()
        if stop or fenced:
            control.should_training_stop = True
            # Without this no checkpoint is written at the stop step (docs/architecture.md,
            # "Stopping a job").
            control.should_save = not fenced
        if control.should_save:
            self._points_before_checkpoint()

    def _points_before_checkpoint(self) -> None:
        # A checkpoint follows in this step (Trainer logs, then saves). A restarted attempt
        # resumes after the checkpoint's step, so every point up to it must be stored first.
        if not self.flusher.flush_sync(self.checkpoint_flush_timeout):
            log.warning("points not all stored before the checkpoint (database unavailable?)")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs:
            return
        values = dict(logs)  # copy: other callbacks and TrainOutput.metrics share `logs`
        kind = point_kind(values)
        epoch = values.pop("epoch", state.epoch)
        self.flusher.add_point(step=state.global_step, kind=kind, epoch=epoch, values=values)
        if control.should_save:
            self._points_before_checkpoint()
        bad = non_finite(values)
        if bad and kind == "train" and self.non_finite_step is None:
            # Trainer does not stop on NaN: weights would go NaN and later logs show 0.0.
            self.non_finite_step = state.global_step
            self.non_finite_values = bad
            control.should_training_stop = True
            control.should_save = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # `on_log` already received the same metrics (Trainer logs them before this hook);
        # record the evaluation's loss in the snapshot only (jobs compute no other metric).
        if metrics and "eval_loss" in metrics:
            self.flusher.set_progress({"eval_loss": metrics["eval_loss"]})

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flusher.set_progress({"last_checkpoint_step": state.global_step})


class HandoffCallback(TrainerCallback):
    """With an artifact store: each checkpoint, once the Trainer has written it whole (and
    rotated the old ones), is handed to the supervisor's uploader by rank 0 (worker/uploads.py):
    hard links and a rename, the training thread's only part of the upload."""

    def __init__(self, job_dir: Path, ranks: int = 1) -> None:
        self.job_dir = job_dir
        self.ranks = ranks

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        from worker.checkpoints import is_complete
        from worker.uploads import hand_off

        checkpoint = Path(args.output_dir or "") / f"checkpoint-{state.global_step}"
        # Several ranks write their RNG states beside rank 0's files without waiting for it.
        for _ in range(100):
            if is_complete(checkpoint, self.ranks):
                break
            time.sleep(0.05)
        else:
            log.warning("%s is not whole: not handed to the uploader", checkpoint.name)
            return
        hand_off(
            checkpoint,
            self.job_dir,
            save_total_limit=args.save_total_limit,
            best=state.best_model_checkpoint,
        )


class GatherRngStates(TrainerCallback):
    """A job of several nodes: every rank's RNG state, which the Trainer writes into its own
    node's checkpoint (`rng_state_<rank>.pth`), is gathered into node 0's copy by global
    rank 0, so that the checkpoint node 0 keeps and uploads resumes every rank exactly, on
    any workers (a new node k finds its ranks' states in it, as the Trainer looks for
    them). Runs before `HandoffCallback`: the hand-off links a checkpoint that holds them."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        import torch.distributed as dist

        checkpoint = Path(args.output_dir or "") / f"checkpoint-{state.global_step}"
        # Written by this rank before its `on_save` (`Trainer._save_checkpoint`); none with
        # `save_only_model`.
        own = checkpoint / f"rng_state_{args.process_index}.pth"
        blob = own.read_bytes() if own.is_file() else None
        gathered: list[bytes | None] | None = (
            [None] * dist.get_world_size() if args.process_index == 0 else None
        )
        dist.gather_object(blob, gathered, dst=0)  # every rank saves at the same step
        for index, data in enumerate(gathered or []):
            path = checkpoint / f"rng_state_{index}.pth"
            if data is None or path.exists():  # node 0's own ranks wrote theirs here
                continue
            staging = path.with_name(f".{path.name}.part")
            staging.write_bytes(data)
            staging.rename(path)
