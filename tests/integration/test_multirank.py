"""Issue 14: a job of `resources.gpus: 2` runs as two ranks started by torch's launcher: on a
worker with two CPU slots (gloo), and on a machine with two GPUs or more (NCCL, marked
`gpu`). It trains like one process with the same global batch; a SIGKILLed worker takes both
ranks down and the job resumes on both from its checkpoint; cancel stops both at one step
with one checkpoint; an exception on rank 1 is the job's error, with rank 1's traceback."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import torch

from tests.integration.conftest import Stack, process_gone
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.stack import stop_process
from worker.checkpoints import is_complete, last_complete

pytestmark = pytest.mark.integration

# No dropout: a rank's dropout masks come from its own RNG stream, so with dropout two ranks
# and one process would draw different masks and their losses could not be compared.
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@dataclass
class Ranks:
    """Where the 2-rank jobs of a test run: a queue, the options of the worker that serves
    it (started again after a SIGKILL), and the process group the ranks must form."""

    stack: Stack
    queue: str
    worker_args: tuple[str, ...]
    backend: str
    use_cpu: bool

    def start_worker(self) -> subprocess.Popen[bytes]:
        proc = self.stack.start_worker("ranks", queues=self.queue, args=self.worker_args)
        # Registered once a 2-device job of the queue validates.
        probe = self.spec("probe")
        deadline = time.monotonic() + 180
        while self.stack.http.post("/jobs/validate", json=probe).status_code != 200:
            assert time.monotonic() < deadline, "no worker with 2 devices registered"
            time.sleep(0.3)
        return proc

    def spec(self, name: str, gpus: int = 2, **training_args: Any) -> dict[str, Any]:
        return tiny_spec(
            name=name,
            queue=self.queue,
            model={"from_config": {**TINY_GPT2, **NO_DROPOUT}},
            resources={"gpus": gpus},
            training_args={
                "per_device_train_batch_size": 4,
                "use_cpu": self.use_cpu,
                **training_args,
            },
        )


@pytest.fixture(scope="module")
def cpu_ranks(stack: Stack) -> Iterator[Ranks]:
    """A worker with two CPU slots, on a queue of its own (the session's worker, one slot,
    serves `default`)."""
    ranks = Ranks(stack, "elsewhere", ("--slots", "2"), backend="gloo", use_cpu=True)
    before = list(stack.workers)
    ranks.start_worker()
    try:
        yield ranks
    finally:
        for proc in [w for w in stack.workers if w not in before]:  # a replacement too
            stop_process(proc, timeout=60)
            stack.workers.remove(proc)


def wait_for(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def rank_processes(worker_pid: int) -> list[psutil.Process]:
    """A worker's training ranks (`worker.runner` under the launcher)."""
    found = []
    try:
        descendants = psutil.Process(worker_pid).children(recursive=True)
    except psutil.Error:
        return []
    for process in descendants:
        try:
            if "worker.runner" in process.cmdline():
                found.append(process)
        except psutil.Error:
            continue
    return found


def running_ranks(stack: Stack) -> tuple[subprocess.Popen[bytes], list[psutil.Process]] | None:
    """The worker running a 2-rank job, and its two ranks."""
    for worker in stack.workers:
        ranks = rank_processes(worker.pid)
        if len(ranks) == 2:
            return worker, ranks
    return None


def log_of(stack: Stack, job_id: str) -> str:
    return (stack.job_dir(job_id) / "train.log").read_text()


# --- what each backend must show -------------------------------------------------------------


def assert_losses_of_one_process(stack: Stack, ranked: str, single: str, *, steps: int) -> None:
    """The job of several ranks `ranked` logged the losses of the one-process job `single`
    with the same global batch, step for step.

    Same initial weights (seeded, and DDP broadcasts rank 0's), same examples per step, no
    dropout: the only difference is float32 summation order (the mean of two means of 4
    versus one mean of 8, and the gradient all-reduce), a relative error of ~1e-7 per
    operation that Adam carries through 6 steps (measured with gloo on CPU: at most 1.8e-7
    relative). 1e-4 relative leaves room for other summation orders (NCCL, cuBLAS) and stays
    far below what a wrong batch or a missed update changes: this model's loss moves by
    ~1e-2 relative from one step to the next."""
    ours = [loss for _, loss in stack.train_losses(ranked)]
    theirs = [loss for _, loss in stack.train_losses(single)]
    assert len(ours) == len(theirs) == steps
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert math.isclose(a, b, rel_tol=1e-4), (step, ours, theirs)


def assert_only_rank_0_stored_points(log: str) -> None:
    """Rank 0's flusher alone stored points (the others' write nothing)."""
    stored = [line for line in log.splitlines() if "points stored" in line]
    assert len(stored) == 1 and "[rank 0]" in stored[0], stored


def trains_like_one_process(ranks: Ranks) -> None:
    stack = ranks.stack
    ranked = stack.submit(ranks.spec("two-ranks", max_steps=6))
    # One process, batch 8 = 2 ranks x 4. The data order is the same: accelerate shards the
    # sampler's batches of 4 round-robin, so ranks 0 and 1 take the first and second four
    # examples of the single process's batch of 8.
    # On another queue when there is one (the session's own worker, one slot, serves
    # `default`): both jobs train at the same time.
    single = stack.submit(
        ranks.spec("one-process", gpus=1, max_steps=6, per_device_train_batch_size=8)
        | {"queue": "default"}
    )
    done = stack.wait(ranked["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["global_step"] == 6
    reference = stack.wait(single["id"])
    assert reference["status"] == "succeeded", reference["error"]

    assert_losses_of_one_process(stack, ranked["id"], single["id"], steps=6)

    # Both ranks joined one process group of the backend; rank 0 alone reported (its flusher
    # is the only one that stored points).
    log = log_of(stack, ranked["id"])
    for rank in (0, 1):
        assert f"rank {rank} of 2: {ranks.backend} process group" in log, log
    assert_only_rank_0_stored_points(log)
    assert (stack.job_dir(ranked["id"]) / "model" / "model.safetensors").is_file()


def resumes_on_both_ranks_after_a_sigkill(ranks: Ranks) -> None:
    stack = ranks.stack
    # Long enough that the kill lands mid-run: a step takes tens of milliseconds on CPU
    # slots, a few on GPUs.
    max_steps, save_steps = (60, 4) if ranks.use_cpu else (600, 40)
    job = stack.submit(
        ranks.spec(
            "two-ranks-killed",
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=save_steps,
            save_total_limit=2,
        )
        | {"limits": {"max_restarts": 3, "max_runtime_seconds": None}}
    )
    job_id = job["id"]
    output = stack.job_dir(job_id) / "output"
    wait_for("a checkpoint of both ranks", lambda: last_complete(output, 2) is not None)
    worker, processes = wait_for("both ranks", lambda: running_ranks(stack))
    assert max(stack.train_steps(job_id)) < max_steps  # mid-run
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    stack.workers.remove(worker)
    # The launcher dies with the worker, and each rank with the launcher.
    wait_for("both ranks to die with their worker", lambda: all(map(process_gone, processes)), 30)
    killed_at = max(stack.train_steps(job_id, 1))
    ranks.start_worker()

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["result"]["global_step"] == max_steps
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    resumed = attempts[1]["resumed_from_step"]
    assert resumed is not None and 0 < resumed <= killed_at
    # Both ranks of attempt 2 resumed from that checkpoint.
    attempt_2 = log_of(stack, job_id).split("--- attempt 2 started")[1]
    for rank in (0, 1):
        started = f"[rank {rank}] INFO traindepot.runner: attempt 2: training (resume from"
        assert f"{started} {output}/checkpoint-{resumed})" in attempt_2, attempt_2
    # One unbroken step axis.
    assert stack.train_steps(job_id) == list(range(1, max_steps + 1))


def cancel_stops_both_ranks_with_a_checkpoint(ranks: Ranks) -> None:
    stack = ranks.stack
    # FSDP asked: sharded on GPUs (the checkpoint and the final model are collective then);
    # accelerate shards on accelerators only, so CPU ranks train with DDP, and say so.
    fsdp: dict[str, Any] = {
        "fsdp": "full_shard",
        "fsdp_config": {"transformer_layer_cls_to_wrap": ["GPT2Block"]},
    }
    job = stack.submit(ranks.spec("two-ranks-cancelled", max_steps=100_000, **fsdp))
    job_id = job["id"]
    wait_for("training", lambda: len(stack.train_steps(job_id)) >= 2)
    _, processes = wait_for("both ranks", lambda: running_ranks(stack))
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
    assert all(map(process_gone, processes))
    # The model as far as it trained (gathered from both shards with FSDP).
    assert (stack.job_dir(job_id) / "model" / "model.safetensors").is_file()
    assert ("train with DDP" in log_of(stack, job_id)) == ranks.use_cpu


def rank_1_exception_is_the_jobs_error(ranks: Ranks) -> None:
    stack = ranks.stack
    # A natural mistake: truncation off with a model of 64 positions. In order (sequential
    # sampling), batches of 2 per rank: rank 0 trains on the two short texts, rank 1 gets the
    # two long ones and fails to embed their positions past 64.
    long_text = "x" * 100
    spec = ranks.spec(
        "two-ranks-rank-1-fails",
        max_steps=2,
        per_device_train_batch_size=2,
        train_sampling_strategy="sequential",
    )
    texts = ("short one", "short two", long_text, long_text)
    spec["dataset"]["rows"] = [{"text": text} for text in texts]
    spec["preprocessing"] = {"max_length": 32, "truncation": False, "padding": "longest"}
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    error = done["error"]
    assert error["rank"] == 1, error
    if ranks.use_cpu:
        assert error["type"] == "IndexError", error
        assert "self.wpe(position_ids)" in error["traceback"]
    else:  # CUDA reports the bad index as a device-side assert, at the next sync
        assert error["traceback"], error
    # Rank 0 may fail too, after rank 1 (its gradient all-reduce loses its peer), or be
    # stopped by the launcher first; either way the job's error is rank 1's, the first.
    assert (stack.job_dir(job["id"]) / "attempt-1.rank-1.error.json").is_file()


# --- on CPU slots (gloo) ---------------------------------------------------------------------


def test_two_ranks_train_like_one_process_with_the_same_global_batch(cpu_ranks: Ranks) -> None:
    trains_like_one_process(cpu_ranks)


def test_sigkilled_worker_takes_both_ranks_down_and_the_job_resumes_on_both(
    cpu_ranks: Ranks,
) -> None:
    resumes_on_both_ranks_after_a_sigkill(cpu_ranks)


def test_cancel_stops_both_ranks_at_one_step_with_a_checkpoint(cpu_ranks: Ranks) -> None:
    cancel_stops_both_ranks_with_a_checkpoint(cpu_ranks)


def test_an_exception_on_rank_1_is_the_jobs_error(cpu_ranks: Ranks) -> None:
    rank_1_exception_is_the_jobs_error(cpu_ranks)


# --- on two GPUs (NCCL) ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.timeout(1200)
def test_two_ranks_on_two_gpus_with_nccl(stack: Stack) -> None:
    """The same on CUDA: the session's worker owns every GPU it sees (two or more here), and
    a worker that replaces it after the SIGKILL does too."""
    ranks = Ranks(stack, "default", (), backend="nccl", use_cpu=False)
    trains_like_one_process(ranks)
    cancel_stops_both_ranks_with_a_checkpoint(ranks)
    rank_1_exception_is_the_jobs_error(ranks)
    resumes_on_both_ranks_after_a_sigkill(ranks)
