"""What an ended attempt means for its job (worker/outcome.py): the outcome file the child
wrote, read with the reason the supervisor stopped it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from traindepot.statuses import JobStatus
from worker.outcome import (
    StopReason,
    first_rank_error,
    outcome_path,
    read_outcome,
    verdict,
    with_rank_errors,
    write_outcome,
    write_rank_error,
)

RESULT = {"global_step": 3, "training_loss": 1.5, "metrics": {}}


def no_log() -> str:
    raise AssertionError("the log is read only when the child left no outcome")


@pytest.mark.parametrize(
    ("outcome", "stop", "status"),
    [
        ({"status": "succeeded", "result": RESULT}, None, JobStatus.SUCCEEDED),
        ({"status": "succeeded", "result": RESULT}, "cancelled", JobStatus.SUCCEEDED),
        ({"status": "failed", "error": {"reason": "data"}}, None, JobStatus.FAILED),
        ({"status": "failed", "error": {"reason": "data"}}, "shutdown", JobStatus.FAILED),
        ({"status": "stopped", "result": RESULT}, "cancelled", JobStatus.CANCELLED),
        ({"status": "stopped", "result": RESULT}, "shutdown", None),
        ({"status": "stopped", "result": RESULT}, "timeout", JobStatus.FAILED),
    ],
)
def test_verdict(outcome: dict[str, Any], stop: StopReason | None, status: JobStatus) -> None:
    ended = verdict(
        outcome, stop_reason=stop, returncode=0, max_runtime_seconds=60, log_tail=no_log
    )
    assert ended.status == status
    assert ended.result == outcome.get("result")


def test_a_timeout_says_which_limit() -> None:
    ended = verdict(
        {"status": "stopped", "result": RESULT},
        stop_reason="timeout",
        returncode=0,
        max_runtime_seconds=1.5,
        log_tail=no_log,
    )
    assert ended.error is not None and ended.error["reason"] == "timeout"
    assert "max_runtime_seconds=1.5" in ended.error["message"]


def test_a_child_that_died_without_an_outcome_fails_with_its_log() -> None:
    ended = verdict(
        {},
        stop_reason=None,
        returncode=-signal.SIGKILL,
        max_runtime_seconds=None,
        log_tail=lambda: "the end of the log",
    )
    assert ended.status == JobStatus.FAILED and ended.error is not None
    assert ended.error["reason"] == "internal"
    assert ended.error["traceback"] == "the end of the log"
    assert "signal 9" in ended.error["message"] and "memory" in ended.error["message"]


def test_outcome_file_round_trip(tmp_path: Path) -> None:
    assert read_outcome(tmp_path, 1) == {}
    write_outcome(outcome_path(tmp_path, 1), {"status": "failed", "loss": float("nan")})
    assert read_outcome(tmp_path, 1) == {"status": "failed", "loss": None}


def test_the_first_rank_error_fails_the_job(tmp_path: Path) -> None:
    """Rank 1 raised; rank 0 failed after it (its collective lost the peer): the job's error
    is rank 1's, whatever rank 0's outcome says."""
    assert first_rank_error(tmp_path, 1) is None
    rank_1 = {"type": "IndexError", "message": "index out of range", "rank": 1}
    rank_0 = {"type": "RuntimeError", "message": "Connection closed by peer", "rank": 0}
    write_rank_error(tmp_path, 1, 1, rank_1)
    write_rank_error(tmp_path, 1, 0, rank_0)  # later
    write_rank_error(tmp_path, 2, 0, rank_0)  # another attempt's
    first = first_rank_error(tmp_path, 1)
    assert first == rank_1
    rank_0_outcome = {"status": "failed", "error": rank_0}
    assert with_rank_errors(rank_0_outcome, first) == {
        "status": "failed",
        "result": None,
        "error": rank_1,
    }
    succeeded = {"status": "succeeded", "result": RESULT}
    assert with_rank_errors(succeeded, None) is succeeded
    assert with_rank_errors(succeeded, first)["status"] == "failed"
