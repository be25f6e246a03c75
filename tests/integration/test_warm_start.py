"""Issue 13: a training child forked from the worker's prepared process (warm start,
worker/warm.py) behaves as one started cold: the same losses bit for bit on CPU, the same
cancel and the same death with a SIGKILLed worker; a job after a failed one starts warm too.

A warm worker (`warm-on`) and a cold one (`warm-off`, TRAINDEPOT_WARM_START=false) run side
by side on the session stack, so every comparison is between jobs of the same run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from traindepot.stack import stop_process
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration

QUEUES = {"warm": "warm-on", "cold": "warm-off"}


@pytest.fixture(scope="module")
def workers(stack: Stack) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {
        "warm": stack.start_worker(
            "warm",
            queues=QUEUES["warm"],
            settings={"TRAINDEPOT_WARM_START": "true"},
        ),
        "cold": stack.start_worker(
            "cold", queues=QUEUES["cold"], settings={"TRAINDEPOT_WARM_START": "false"}
        ),
    }
    yield started
    for proc in started.values():
        stop_process(proc, timeout=20)


def start_of(stack: Stack, job_id: str) -> list[str | None]:
    return [attempt["start"] for attempt in stack.get(job_id)["attempts"]]


def first_log_line(stack: Stack, job_id: str) -> str:
    return (stack.job_dir(job_id) / "train.log").read_text().splitlines()[0]


def submit_to_both(stack: Stack, spec: dict[str, Any]) -> dict[str, str]:
    return {kind: stack.submit({**spec, "queue": queue})["id"] for kind, queue in QUEUES.items()}


def wait_training(stack: Stack, job_ids: dict[str, str]) -> None:
    deadline = time.monotonic() + 180
    for job_id in job_ids.values():
        while not stack.train_steps(job_id):
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)


def test_warm_child_trains_bit_for_bit_as_cold_and_after_a_failed_job(
    ready: Stack, workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    stack = ready
    # A job that fails inside the training child (no such column), on the warm worker.
    failed = stack.submit(
        tiny_spec(name="fails-first", queue="warm-on", dataset={"rows": [{"body": "x"}] * 4})
    )
    assert stack.wait(failed["id"])["status"] == "failed"
    assert start_of(stack, failed["id"]) == ["warm"]

    jobs = submit_to_both(stack, tiny_spec(name="warm-vs-cold"))
    done = {kind: stack.wait(job_id) for kind, job_id in jobs.items()}
    assert [job["status"] for job in done.values()] == ["succeeded", "succeeded"]
    # The job after the failed one started warm; the cold worker's started cold.
    assert start_of(stack, jobs["warm"]) == ["warm"]
    assert start_of(stack, jobs["cold"]) == ["cold"]
    assert "(warm start: forked from a prepared process)" in first_log_line(stack, jobs["warm"])
    assert "(cold start: warm start is off" in first_log_line(stack, jobs["cold"])

    warm_losses = stack.train_losses(jobs["warm"])
    cold_losses = stack.train_losses(jobs["cold"])
    assert [step for step, _ in warm_losses] == [1, 2, 3, 4, 5, 6]
    assert warm_losses == cold_losses  # exact float equality: bit for bit
    assert done["warm"]["result"]["training_loss"] == done["cold"]["result"]["training_loss"]
    # Each child ran in its job's directory and wrote its model there.
    for job_id in jobs.values():
        assert (stack.job_dir(job_id) / "model" / "manifest.json").is_file()


def test_cancel_stops_a_warm_child_as_a_cold_one(
    ready: Stack, workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    stack = ready
    spec = tiny_spec(name="cancel-warm-vs-cold", training_args={"max_steps": 100_000})
    jobs = submit_to_both(stack, spec)
    wait_training(stack, jobs)
    for job_id in jobs.values():
        assert stack.http.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    for kind, job_id in jobs.items():
        done = stack.wait(job_id)
        assert done["status"] == "cancelled", (kind, done)
        result = done["result"]  # the partial TrainOutput, a checkpoint at the stop step
        assert 0 < result["global_step"] < 100_000, kind
        checkpoint = stack.job_dir(job_id) / "output" / f"checkpoint-{result['global_step']}"
        assert is_complete(checkpoint), kind
        assert [a["outcome"] for a in stack.attempts(job_id)] == ["cancelled"]
        assert start_of(stack, job_id) == [kind]


def test_a_sigkilled_worker_takes_its_warm_child_with_it_as_a_cold_one(
    ready: Stack, workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    stack = ready
    spec = tiny_spec(name="kill-warm-vs-cold", training_args={"max_steps": 100_000})
    jobs = submit_to_both(stack, spec)
    wait_training(stack, jobs)
    descendants = {
        kind: psutil.Process(worker.pid).children(recursive=True)
        for kind, worker in workers.items()
    }
    # The cold worker's training child; the warm worker's, its parent (the prepared process
    # it was forked from) and the template that forked that one.
    assert len(descendants["cold"]) >= 1 and len(descendants["warm"]) >= 2
    for worker in workers.values():
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    for kind, processes in descendants.items():
        _, alive = psutil.wait_procs(processes, timeout=30)
        assert alive == [], (kind, alive)  # no orphan trains on
    # Both jobs then end alike: the cancel of a job whose worker died ends it once the
    # lease expires (the session worker's reaper).
    for job_id in jobs.values():
        stack.http.post(f"/jobs/{job_id}/cancel")
    for kind, job_id in jobs.items():
        done = stack.wait(job_id, timeout=120)
        assert done["status"] == "cancelled", (kind, done)
        assert [a["outcome"] for a in stack.attempts(job_id)] == ["lost"], kind
