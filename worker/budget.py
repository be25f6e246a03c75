"""The training child's budgets: resident memory and disk.

The supervisor calls `Budget.exceeded()` from its watch loop; at most every
`budget_check_seconds` it measures
- memory: the resident set of the child and its descendants (dataloader workers), with
  psutil; a child over `job_memory_bytes` is killed before the kernel's OOM killer picks a
  victim on a shared machine (PostgreSQL, the worker itself);
- disk: the bytes under the job's directory (checkpoints, the log); over `job_disk_bytes`
  the child is killed too.
The job then fails with reason `oom` or `disk` and a message naming the budget.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from traindepot import artifacts
from traindepot.settings import Settings

log = logging.getLogger(__name__)

BudgetReason = Literal["oom", "disk"]


@dataclass(frozen=True)
class Overrun:
    reason: BudgetReason
    message: str


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all of its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


class Budget:
    """Measures one attempt's child against the settings' budgets."""

    def __init__(
        self, *, pid: int, job_dir: Path, memory_bytes: int, disk_bytes: int, every: float
    ) -> None:
        self.pid = pid
        self.job_dir = job_dir
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self.every = every
        self._next = 0.0

    def exceeded(self) -> Overrun | None:
        """An overrun if one is measured now; None between measurements."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.every
        rss = tree_rss(self.pid)
        if rss > self.memory_bytes:
            return Overrun(
                "oom",
                f"the training process used {rss / 2**20:,.0f} MiB of memory, over the job's"
                f" budget of {self.memory_bytes / 2**20:,.0f} MiB"
                " (TRAINDEPOT_JOB_MEMORY_BYTES): reduce the model, the batch or max_length",
            )
        used = artifacts.disk_usage(self.job_dir, allocated=True)
        if used > self.disk_bytes:
            return Overrun(
                "disk",
                f"the job's directory grew to {used / 2**20:,.1f} MiB, over its disk budget"
                f" of {self.disk_bytes / 2**20:,.1f} MiB (TRAINDEPOT_JOB_DISK_BYTES): save"
                " fewer checkpoints (`save_total_limit`, `save_steps`)",
            )
        return None


def for_child(pid: int, job_dir: Path, settings: Settings) -> Budget:
    return Budget(
        pid=pid,
        job_dir=job_dir,
        memory_bytes=settings.job_memory_bytes,
        disk_bytes=settings.job_disk_bytes,
        every=settings.budget_check_seconds,
    )


def kill_tree(pid: int) -> None:
    """SIGKILL the child's process group (it leads its own session: dataloader workers and
    any process it started go with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def error(overrun: Overrun) -> dict[str, Any]:
    """The job's `error` object for an overrun."""
    return {
        "type": "MemoryBudgetExceeded" if overrun.reason == "oom" else "DiskBudgetExceeded",
        "message": overrun.message,
        "traceback": None,
        "reason": overrun.reason,
    }
