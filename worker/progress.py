"""The job's progress snapshot (`jobs.progress`): global step, max steps, epoch, samples per
second, ETA, and the newest loss, learning rate and grad norm.

Coalesced: it is one dict, each key holds its latest value, and the flusher writes it once
per flush however many steps that flush covers. The step progress is read from the Trainer's
live `TrainerState` at each flush, so a training step does not even build a snapshot.
"""

from __future__ import annotations

import time
from typing import Any

# The values of the newest training point that the snapshot carries.
_TRAIN_KEYS = ("loss", "learning_rate", "grad_norm")


class Progress:
    def __init__(self) -> None:
        self._state: Any = None
        self._started = 0.0
        self._start_step = 0
        self._samples_per_step = 1
        self._seen_step = -1
        self._values: dict[str, Any] = {}
        self._version = 0
        self._written_version = 0

    def update(self, progress: dict[str, Any]) -> None:
        """Merge keys into the snapshot (each keeps its latest value)."""
        self._values.update(progress)
        self._version += 1

    def watch_state(self, state: Any, *, samples_per_step: int) -> None:
        """Follow a `TrainerState` (at train begin, again after an `auto_find_batch_size`
        restart): global_step, max_steps, epoch, samples per second and the ETA are derived
        from it at each flush."""
        self._state = state
        self._started = time.monotonic()
        self._start_step = state.global_step
        self._samples_per_step = samples_per_step
        self._seen_step = -1

    def fold(self, newest_train_values: dict[str, Any] | None) -> None:
        """Fold the watched state and the newest training point's values into the snapshot."""
        state = self._state
        if state is not None and state.global_step != self._seen_step:
            step = state.global_step
            self._seen_step = step
            progress: dict[str, Any] = {
                "global_step": step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
                # The global batch: per-device batch x accumulation x every rank of every node.
                "samples_per_step": self._samples_per_step,
            }
            done, elapsed = step - self._start_step, time.monotonic() - self._started
            if done > 0 and elapsed > 0:
                steps_per_second = done / elapsed
                progress["steps_per_second"] = steps_per_second
                progress["samples_per_second"] = steps_per_second * self._samples_per_step
                progress["eta_seconds"] = max(state.max_steps - step, 0) / steps_per_second
            self.update(progress)
        if newest_train_values is not None:
            values = newest_train_values
            self.update({k: values[k] for k in _TRAIN_KEYS if k in values})

    @property
    def dirty(self) -> bool:
        return self._version != self._written_version

    def pending(self) -> tuple[int, dict[str, Any]]:
        """The version and a copy of the snapshot if it changed since it was last written
        (else an empty dict); pass the version to `written` once it is stored."""
        return self._version, dict(self._values) if self.dirty else {}

    def written(self, version: int) -> None:
        self._written_version = version
