"""The outcome of an attempt: the file the training child writes (its `TrainOutput` or its
error), and how the supervisor turns it, with the reason it stopped the child (if it did),
into what happens to the job next (docs/architecture.md, "Statuses").
"""

from __future__ import annotations

import json
import signal
import time
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


def rank_error_path(job_dir: Path, attempt: int, rank: int) -> Path:
    return job_dir / f"attempt-{attempt}.rank-{rank}.error.json"


def write_rank_error(job_dir: Path, attempt: int, rank: int, error: dict[str, Any]) -> None:
    """A rank of a multi-rank job raised: its error, with when it was caught."""
    write_outcome(rank_error_path(job_dir, attempt, rank), {"at": time.time(), "error": error})


def first_rank_error(job_dir: Path, attempt: int) -> dict[str, Any] | None:
    """The error of the rank that failed first, or None. When one rank raises, the others
    fail after it (their collectives lose a peer, or the launcher stops them): the earliest
    is the cause."""
    first = first_rank_error_at(job_dir, attempt)
    return None if first is None else first[1]


def first_rank_error_at(job_dir: Path, attempt: int) -> tuple[float, dict[str, Any]] | None:
    """`first_rank_error` with when it was caught (a node's, compared with other nodes')."""
    found = []
    for path in job_dir.glob(f"attempt-{attempt}.rank-*.error.json"):
        try:
            data = json.loads(path.read_text())
            found.append((float(data["at"]), dict(data["error"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return min(found, key=lambda pair: pair[0]) if found else None


def with_rank_errors(outcome: dict[str, Any], first_error: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's outcome, failed with the first rank error if any rank raised: an exception on
    any rank fails the job (rank 0's result, if it wrote one, is kept)."""
    if first_error is None:
        return outcome
    return {"status": "failed", "result": outcome.get("result"), "error": first_error}


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
