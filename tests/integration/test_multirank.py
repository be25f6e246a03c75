"""Issue 14: a job of `resources.gpus: 2` runs as two ranks started by torch's launcher, on a
worker with two CPU slots (gloo). It trains like one process with the same global batch; a
SIGKILLed worker takes both ranks down and the job resumes on both from its checkpoint;
cancel stops both at one step with one checkpoint; an exception on rank 1 is the job's
error, with rank 1's traceback."""

from __future__ import annotations

import math
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Stack
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.stack import stop_process
from worker.checkpoints import is_complete, last_complete

pytestmark = pytest.mark.integration

# No dropout: a rank's dropout masks come from its own RNG stream, so with dropout two ranks
# and one process would draw different masks and their losses could not be compared.
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


class SlotWorker:
    """The module's worker with two CPU slots (replaced after the SIGKILL test kills it)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        proc = self.stack.start_worker("two-slots", args=("--slots", "2"))
        # Registered once a 2-slot job validates (the session's own worker has one slot).
        probe = tiny_spec(name="probe", resources={"gpus": 2})
        deadline = time.monotonic() + 180
        while self.stack.http.post("/jobs/validate", json=probe).status_code != 200:
            assert time.monotonic() < deadline, "the 2-slot worker never registered"
            time.sleep(0.3)
        return proc

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.stack.workers.remove(self.proc)


@pytest.fixture(scope="module")
def slots(stack: Stack) -> Iterator[SlotWorker]:
    worker = SlotWorker(stack)
    try:
        yield worker
    finally:
        worker.stop()


def two_rank_spec(name: str, **training_args: Any) -> dict[str, Any]:
    return tiny_spec(
        name=name,
        model={"from_config": {**TINY_GPT2, **NO_DROPOUT}},
        resources={"gpus": 2},
        training_args={"per_device_train_batch_size": 4, **training_args},
    )


def wait_for(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def rank_processes(worker_pid: int) -> list[psutil.Process]:
    """The worker's training ranks (`worker.runner` under the launcher)."""
    found = []
    for process in psutil.Process(worker_pid).children(recursive=True):
        try:
            if "worker.runner" in process.cmdline():
                found.append(process)
        except psutil.Error:
            continue
    return found


def gone(process: psutil.Process) -> bool:
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def losses(stack: Stack, job_id: str) -> list[float]:
    rows = stack.sql(
        "SELECT values->>'loss' FROM job_metrics WHERE job_id = %s AND kind = 'train'"
        " ORDER BY step",
        uuid.UUID(job_id),
    )
    return [float(row[0]) for row in rows]


def log_of(stack: Stack, job_id: str) -> str:
    return (stack.job_dir(job_id) / "train.log").read_text()


def test_two_ranks_train_like_one_process_with_the_same_global_batch(
    stack: Stack, slots: SlotWorker
) -> None:
    ranked = stack.submit(two_rank_spec("two-ranks", max_steps=6))
    # One process, batch 8 = 2 ranks x 4. The data order is the same: accelerate shards the
    # sampler's batches of 4 round-robin, so ranks 0 and 1 take the first and second four
    # examples of the single process's batch of 8.
    single = stack.submit(
        {
            **two_rank_spec("one-process", max_steps=6, per_device_train_batch_size=8),
            "resources": {"gpus": 1},
        }
    )
    done = stack.wait(ranked["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["global_step"] == 6
    reference = stack.wait(single["id"])
    assert reference["status"] == "succeeded", reference["error"]

    # Same initial weights (seeded, and DDP broadcasts rank 0's), same examples per step, no
    # dropout: the only difference is float32 summation order (the mean of two means of 4
    # versus one mean of 8, and gloo's gradient all-reduce), a relative error of ~1e-7 per
    # operation that Adam carries through 6 steps. 1e-4 relative is three orders above that
    # and far below what a wrong batch would change (a different batch moves the loss of
    # this model by ~1e-2).
    ours, theirs = losses(stack, ranked["id"]), losses(stack, single["id"])
    assert len(ours) == len(theirs) == 6
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert math.isclose(a, b, rel_tol=1e-4), (step, ours, theirs)

    # Both ranks ran; rank 0 alone reported (its flusher is the only one that stored points).
    log = log_of(stack, ranked["id"])
    assert "[rank 0]" in log and "[rank 1]" in log
    stored = [line for line in log.splitlines() if "points stored" in line]
    assert len(stored) == 1 and "[rank 0]" in stored[0], stored
    assert (stack.job_dir(ranked["id"]) / "model" / "model.safetensors").is_file()


def test_sigkilled_worker_takes_both_ranks_down_and_the_job_resumes_on_both(
    stack: Stack, slots: SlotWorker
) -> None:
    max_steps = 40
    job = stack.submit(
        two_rank_spec(
            "two-ranks-killed",
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=4,
            save_total_limit=2,
        )
        | {"limits": {"max_restarts": 3, "max_runtime_seconds": None}}
    )
    job_id = job["id"]
    output = stack.job_dir(job_id) / "output"
    wait_for(
        "a checkpoint of both ranks",
        lambda: (c := last_complete(output, 2)) is not None and (c / "rng_state_1.pth").exists(),
    )
    ranks = wait_for("both ranks", lambda: len(r := rank_processes(slots.proc.pid)) == 2 and r)
    assert max(stack.train_steps(job_id)) < max_steps  # mid-run
    slots.proc.send_signal(signal.SIGKILL)
    slots.proc.wait(30)
    stack.workers.remove(slots.proc)
    # The launcher dies with the worker, and each rank with the launcher.
    wait_for("both ranks to die with their worker", lambda: all(gone(r) for r in ranks), 30)
    killed_at = max(stack.train_steps(job_id, 1))
    slots.proc = slots.start()

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["result"]["global_step"] == max_steps
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    resumed = attempts[1]["resumed_from_step"]
    assert resumed is not None and 0 < resumed <= killed_at
    # Both ranks of attempt 2 resumed from the same checkpoint.
    attempt_2 = log_of(stack, job_id).split("--- attempt 2 started")[1]
    for rank in (0, 1):
        assert f"[rank {rank}] INFO traindepot.runner: attempt 2: training (resume from" in (
            attempt_2
        )
        assert f"checkpoint-{resumed})" in attempt_2
    # One unbroken step axis.
    assert stack.train_steps(job_id) == list(range(1, max_steps + 1))


def test_cancel_stops_both_ranks_at_one_step_with_a_checkpoint(
    stack: Stack, slots: SlotWorker
) -> None:
    job = stack.submit(two_rank_spec("two-ranks-cancelled", max_steps=100_000))
    job_id = job["id"]
    wait_for("training", lambda: len(stack.train_steps(job_id)) >= 2)
    ranks = rank_processes(slots.proc.pid)
    assert len(ranks) == 2
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    done = stack.wait(job_id)
    assert done["status"] == "cancelled", done["error"]
    step = done["result"]["global_step"]
    assert 2 <= step < 100_000
    # The checkpoint of the stop step, written by both ranks together (each its RNG state).
    checkpoint = stack.job_dir(job_id) / "output" / f"checkpoint-{step}"
    assert is_complete(checkpoint, ranks=2)
    assert sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    assert all(gone(r) for r in ranks)


def test_an_exception_on_rank_1_is_the_jobs_error(stack: Stack, slots: SlotWorker) -> None:
    # A natural mistake: truncation off with a model of 64 positions. In order (sequential
    # sampling), batches of 2 per rank: rank 0 trains on the two short texts, rank 1 gets the
    # two long ones and fails to embed their positions past 64.
    long_text = "x" * 100
    spec = two_rank_spec(
        "two-ranks-rank-1-fails",
        max_steps=2,
        per_device_train_batch_size=2,
        train_sampling_strategy="sequential",
    )
    spec["dataset"]["rows"] = [
        {"text": t} for t in ("short one", "short two", long_text, long_text)
    ]
    spec["preprocessing"] = {"max_length": 32, "truncation": False, "padding": "longest"}
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    error = done["error"]
    assert error["rank"] == 1, error
    assert error["type"] == "IndexError", error
    assert "index out of range" in error["message"]
    assert "embedding" in error["traceback"]
    # Rank 0 may fail too, after rank 1 (its gradient all-reduce loses its peer: gloo's
    # "Connection closed by peer"), or be stopped by the launcher first; either way the
    # job's error is rank 1's, the first.
    errors = sorted(p.name for p in Path(stack.job_dir(job["id"])).glob("*.error.json"))
    assert "attempt-1.rank-1.error.json" in errors
    assert "Connection closed" not in error["message"]
