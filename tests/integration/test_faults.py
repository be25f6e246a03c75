"""Issue 4: jobs survive their workers. Fault injection against the real services: worker
processes killed with SIGKILL or stopped with SIGTERM, Redis and PostgreSQL restarted."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tests.integration.conftest import Stack, process_gone
from tests.specs import TINY_GPT2, tiny_spec
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration


def slow_spec(name: str, max_steps: int, save_steps: int, **training_args: Any) -> dict[str, Any]:
    """Big enough that a step takes tens of milliseconds on a CPU (so a test can act while it
    trains), small enough to stay cheap; a checkpoint every `save_steps`."""
    return tiny_spec(
        name=name,
        model={"from_config": {**TINY_GPT2, "n_layer": 2, "n_embd": 128, "n_positions": 128}},
        preprocessing={"max_length": 128},
        training_args={
            "max_steps": max_steps,
            "per_device_train_batch_size": 8,
            "save_strategy": "steps",
            "save_steps": save_steps,
            "save_total_limit": 2,
            **training_args,
        },
        limits={"max_restarts": 3, "max_runtime_seconds": None},
    )


def wait_for(what: str, check: Any, timeout: float = 180, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def live_worker(stack: Stack) -> Any:
    alive = [w for w in stack.workers if w.poll() is None]
    assert len(alive) == 1, "these tests run with exactly one worker"
    return alive[0]


def training_child(worker_pid: int, job_dir: Path) -> psutil.Process:
    """The worker's training child: the descendant running in the job's directory (a
    child of the worker when started cold, of its prepared process when warm)."""

    def find() -> psutil.Process | None:
        for process in psutil.Process(worker_pid).children(recursive=True):
            try:
                if Path(process.cwd()) == job_dir.resolve():
                    return process
            except psutil.Error:  # exited meanwhile, or a zombie about to be reaped
                continue
        return None

    found: psutil.Process = wait_for("the training child", find, timeout=60)
    return found


def assert_history_complete(stack: Stack, job_id: str, max_steps: int) -> None:
    # One row per step (the unique index forbids duplicates), and no gap.
    assert stack.train_steps(job_id) == list(range(1, max_steps + 1))
    dupes = stack.sql(
        "SELECT step, kind, count(*) FROM job_metrics WHERE job_id = %s"
        " GROUP BY step, kind HAVING count(*) > 1",
        uuid.UUID(job_id),
    )
    assert dupes == []


def test_sigkill_worker_three_times_resumes_and_matches_uninterrupted_run(stack: Stack) -> None:
    max_steps = 80
    spec = slow_spec("killed-three-times", max_steps=max_steps, save_steps=4)
    # The same job, never interrupted: the reference for the bit-for-bit comparison.
    reference = stack.submit({**spec, "name": "never-interrupted"})
    reference_done = stack.wait(reference["id"])
    assert reference_done["status"] == "succeeded", reference_done["error"]

    job = stack.submit(spec)
    job_id = job["id"]
    deaths: list[datetime] = []
    for attempt, kill_after_step in ((1, 12), (2, 32), (3, 52)):
        # Kill once this attempt itself has logged steps past the threshold (its rows carry
        # its attempt number), i.e. mid-training and after at least one new checkpoint.
        wait_for(
            f"attempt {attempt} to pass step {kill_after_step}",
            lambda a=attempt, k=kill_after_step: max(stack.train_steps(job_id, a), default=0) >= k,
        )
        worker = live_worker(stack)
        child = training_child(worker.pid, stack.job_dir(job_id))
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        # PR_SET_PDEATHSIG: the kernel kills the training child with its worker.
        wait_for("the training child to die with its worker", lambda c=child: process_gone(c), 30)
        deaths.append(datetime.now(UTC))
        assert max(stack.train_steps(job_id, attempt)) < max_steps  # it was mid-training
        stack.start_worker(f"after-kill-{attempt}")

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 4
    assert done["result"]["global_step"] == max_steps

    # Attempts: three lost (ended by the reaper), one that finished; each later one resumed
    # from a checkpoint of the one before, and none started before the previous one ended
    # (and before its training child was seen dead).
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["lost", "lost", "lost", "succeeded"]
    assert attempts[0]["resumed_from_step"] is None
    resumed = [a["resumed_from_step"] for a in attempts[1:]]
    assert all(step is not None and step > 0 for step in resumed), resumed
    assert resumed == sorted(resumed)
    for before, after, death in zip(attempts[:-1], attempts[1:], deaths, strict=True):
        assert before["ended_at"] is not None
        assert before["ended_at"] <= after["started_at"]
        assert death <= after["started_at"]
    # Every point an attempt wrote lies within that attempt's own lifetime.
    for a in attempts:
        outside = stack.sql(
            "SELECT count(*) FROM job_metrics WHERE job_id = %s AND attempt = %s"
            " AND (recorded_at < %s OR recorded_at > %s)",
            uuid.UUID(job_id),
            a["attempt"],
            a["started_at"],
            a["ended_at"],
        )
        assert outside == [(0,)], a

    log = (stack.job_dir(job_id) / "train.log").read_text()
    for n in (1, 2, 3, 4):
        assert f"--- attempt {n} started" in log
    for step in resumed:
        assert f"checkpoint-{step})" in log  # "training (resume from .../checkpoint-N)"

    assert_history_complete(stack, job_id, max_steps)

    # Bit for bit: every logged loss (the final one included) and the final weights equal
    # those of the uninterrupted run. (TrainOutput.training_loss differs by design: a resumed
    # `train()` averages only the steps it ran itself.)
    losses = [loss for _, loss in stack.train_losses(job_id)]
    assert losses == [loss for _, loss in stack.train_losses(reference["id"])]
    final = f"output/checkpoint-{max_steps}/model.safetensors"
    ours = load_file(str(stack.job_dir(job_id) / final))
    theirs = load_file(str(stack.job_dir(reference["id"]) / final))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert done["progress"]["loss"] == reference_done["progress"]["loss"]


def test_redis_restart_mid_run_history_complete_and_worker_serves_on(stack: Stack) -> None:
    assert stack.redis_server is not None, "needs the session's own redis-server"
    max_steps = 120
    job = stack.submit(slow_spec("redis-restart", max_steps=max_steps, save_steps=60))
    job_id = job["id"]
    wait_for("training to start", lambda: len(stack.train_steps(job_id)) >= 3)
    stack.redis_server.stop()
    down_at = max(stack.train_steps(job_id))
    # Training goes on without Redis: the history keeps growing in Postgres.
    wait_for("steps while Redis is down", lambda: max(stack.train_steps(job_id)) >= down_at + 5)
    stack.redis_server.start()  # same port, empty (no persistence): the queue is gone too
    done = stack.wait(job_id)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1
    assert_history_complete(stack, job_id, max_steps)

    # The worker reconnected to the restarted Redis and takes new jobs.
    later = stack.submit(tiny_spec(name="after-redis-restart"))
    later_done = stack.wait(later["id"], timeout=120)
    assert later_done["status"] == "succeeded", later_done["error"]


def test_postgres_restart_mid_run_api_503_then_recovers(pg_stack: Stack) -> None:
    stack = pg_stack
    max_steps = 120
    job = stack.submit(slow_spec("postgres-restart", max_steps=max_steps, save_steps=60))
    job_id = job["id"]
    wait_for("training to start", lambda: len(stack.train_steps(job_id)) >= 3)

    stack.stop_postgres()
    unavailable: list[dict[str, Any]] = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        response = stack.http.get(f"/jobs/{job_id}")
        assert response.status_code == 503, response.text  # never a 500
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["retry-after"]
        unavailable.append(response.json())
        time.sleep(0.2)
    stack.start_postgres()

    assert unavailable
    assert all(body["error"] == "service_unavailable" for body in unavailable)
    assert all("traceback" not in str(body).lower() for body in unavailable)
    # The API recovers by itself (its pool reconnects), and so do the worker and the child.
    wait_for("the API to answer again", lambda: stack.http.get(f"/jobs/{job_id}").is_success, 60)
    # Every route, at once: no pooled connection from before the restart is left to fail a
    # request (the API renews both its pools when it loses PostgreSQL, api/aio_db.py).
    listed = stack.http.get("/jobs")
    assert listed.status_code == 200, listed.text
    done = stack.wait(job_id)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1  # a short outage costs no restart
    assert done["result"]["global_step"] == max_steps
    assert_history_complete(stack, job_id, max_steps)


def test_warm_shutdown_requeues_at_a_checkpoint_and_resumes(stack: Stack) -> None:
    max_steps = 60
    job = stack.submit(slow_spec("warm-shutdown", max_steps=max_steps, save_steps=1000))
    job_id = job["id"]
    wait_for("training to start", lambda: len(stack.train_steps(job_id, 1)) >= 3)
    worker = live_worker(stack)
    worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    worker.wait(60)
    released = stack.get(job_id)
    assert released["status"] == "queued", released
    first = stack.attempts(job_id)[0]
    assert first["outcome"] == "released"
    stopped_at = max(stack.train_steps(job_id, 1))
    assert stopped_at < max_steps
    # The stop step's checkpoint (save_steps alone would have written none by then).
    checkpoint = stack.job_dir(job_id) / "output" / f"checkpoint-{stopped_at}"
    assert is_complete(checkpoint)

    stack.start_worker("after-warm-shutdown")
    done = stack.wait(job_id)
    assert done["status"] == "succeeded", done["error"]
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["released", "succeeded"]
    assert attempts[1]["resumed_from_step"] == stopped_at
    assert_history_complete(stack, job_id, max_steps)
