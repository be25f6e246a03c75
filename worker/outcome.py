"""The outcome of an attempt: the file the training child writes (its `TrainOutput` or its
error), and how the supervisor turns it, with the reason it stopped the child (if it did),
into what happens to the job next (docs/architecture.md, "Statuses").
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from db.models import JobStatus
from traindepot.events import json_safe

# Why the supervisor stopped the child: a cancel, the time limit, a warm shutdown.
StopReason = Literal["cancelled", "timeout", "shutdown"]


def outcome_path(job_dir: Path, attempt: int) -> Path:
    return job_dir / f"attempt-{attempt}.outcome.json"


def write_outcome(path: Path, outcome: dict[str, Any]) -> None:
    """Written whole or not at all (a rename): the supervisor never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json_safe(outcome)))
    tmp.replace(path)


def read_outcome(job_dir: Path, attempt: int) -> dict[str, Any]:
    """The child's outcome; empty when it wrote none (it died first)."""
    try:
        data: dict[str, Any] = json.loads(outcome_path(job_dir, attempt).read_text())
        return data
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Verdict:
    """The job's terminal status with its result and error, or `status=None`: give the job
    back to the queue (a warm shutdown stopped it; the next attempt resumes it)."""

    status: JobStatus | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def verdict(
    outcome: dict[str, Any],
    *,
    stop_reason: StopReason | None,
    returncode: int,
    max_runtime_seconds: float | None,
    log_tail: Callable[[], str],
) -> Verdict:
    """What an ended attempt means for its job. `log_tail` gives the end of the training log,
    read only when the child died without an outcome."""
    kind = outcome.get("status")  # succeeded | stopped | failed | None (no outcome file)
    result = outcome.get("result")
    error: dict[str, Any] | None = outcome.get("error")
    if kind == "succeeded":
        # Every step ran: a stop that came too late changes nothing.
        return Verdict(JobStatus.SUCCEEDED, result, error)
    if kind == "failed" and stop_reason in (None, "shutdown"):
        return Verdict(JobStatus.FAILED, result, error)
    if stop_reason == "shutdown":
        # Stopped at a checkpoint (or killed after the grace period).
        return Verdict(None, result)
    if stop_reason == "timeout":
        limit = "" if max_runtime_seconds is None else f"={max_runtime_seconds:g}"
        return Verdict(
            JobStatus.FAILED,
            result,
            {
                "type": "TimeoutError",
                "message": f"the job ran past limits.max_runtime_seconds{limit}",
                "traceback": None,
                "reason": "timeout",
            },
        )
    if stop_reason == "cancelled" or kind == "stopped":
        return Verdict(JobStatus.CANCELLED, result, error)
    how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    killed = " (killed: possibly out of host memory)" if returncode == -signal.SIGKILL else ""
    return Verdict(
        JobStatus.FAILED,
        result,
        {
            "type": "TrainingProcessDied",
            "message": f"the training process ended with {how} before reporting a result{killed}",
            "traceback": log_tail(),
            "reason": "internal",
        },
    )
