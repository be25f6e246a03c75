"""The Trainer callback: turns Trainer events into points for the flusher, and stops
training cooperatively (cancel, time limit, non-finite loss, lost lease).

Every hook does O(1) in-memory work: a training step never waits on the network or the
database (the flusher does that, on its own thread).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.flusher import Flusher

# Keys of the end-of-training log (`Trainer` logs them once, with the TrainOutput metrics).
_SUMMARY_KEYS = frozenset({"train_runtime", "train_loss", "train_samples_per_second"})


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
    def __init__(self, flusher: Flusher, *, log_stream: Any = None) -> None:
        self.flusher = flusher
        # Set from a signal handler (cancel / time limit) or by the runner.
        self.stop_requested = threading.Event()
        self.non_finite_step: int | None = None
        self.non_finite_values: dict[str, Any] = {}
        self.train_begins = 0
        self._log_stream = log_stream if log_stream is not None else sys.stdout
        self._train_started = 0.0
        self._start_step = 0
        self._samples_per_step = 1

    # Training starts (again, with `auto_find_batch_size` after an OOM).
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.train_begins += 1
        self._train_started = time.monotonic()
        self._start_step = state.global_step
        self._samples_per_step = (
            args.per_device_train_batch_size
            * max(args.gradient_accumulation_steps, 1)
            * max(args.world_size, 1)
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
        self.flusher.set_progress(
            {"global_step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch}
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flusher.set_progress(self._progress(state))
        if self.stop_requested.is_set() or self.flusher.fenced:
            control.should_training_stop = True
            # Without this no checkpoint is written at the stop step (DESIGN.md).
            control.should_save = not self.flusher.fenced

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
        progress = self._progress(state)
        for key in ("loss", "learning_rate", "grad_norm"):
            if key in values:
                progress[key] = values[key]
        self.flusher.set_progress(progress)
        self._write_log_line(state.global_step, epoch, values)
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
        # record the evaluation in the snapshot only.
        if metrics:
            self.flusher.set_progress(
                {k: v for k, v in metrics.items() if k in ("eval_loss", "eval_accuracy")}
            )

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.flusher.set_progress({"last_checkpoint_step": state.global_step})

    def _progress(self, state: TrainerState) -> dict[str, Any]:
        elapsed = time.monotonic() - self._train_started
        done = state.global_step - self._start_step
        progress: dict[str, Any] = {
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
        }
        if done > 0 and elapsed > 0:
            steps_per_second = done / elapsed
            progress["samples_per_second"] = steps_per_second * self._samples_per_step
            progress["eta_seconds"] = max(state.max_steps - state.global_step, 0) / steps_per_second
        return progress

    def _write_log_line(self, step: int, epoch: Any, values: dict[str, Any]) -> None:
        # The job's training log (GET /jobs/{id}/logs): one JSON object a line.
        line = json.dumps({"step": step, "epoch": epoch, **values}, default=str)
        self._log_stream.write(line + "\n")
        self._log_stream.flush()
