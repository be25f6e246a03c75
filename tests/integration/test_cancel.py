"""Issue 4: cancel while queued, while running (a checkpoint at the stop step), after finish."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration


def long_spec(name: str) -> dict[str, Any]:
    return tiny_spec(
        name=name, training_args={"max_steps": 100_000, "save_strategy": "no", "logging_steps": 1}
    )


def test_cancel_queued_and_running_jobs(stack: Stack) -> None:
    running = stack.submit(long_spec("cancel-while-running"))
    stack.wait(running["id"], until={"running"}, timeout=120)
    deadline = time.monotonic() + 120
    while not stack.train_steps(running["id"]):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)

    # Queued behind it (one worker): cancelled at once, never started.
    queued = stack.submit(tiny_spec(name="cancel-while-queued"))
    response = stack.http.post(f"/jobs/{queued['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None

    # Running: `cancelling` at once, then stopped at a step boundary with a checkpoint there.
    response = stack.http.post(f"/jobs/{running['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelling"
    again = stack.http.post(f"/jobs/{running['id']}/cancel")  # idempotent while cancelling
    assert again.status_code == 200 and again.json()["status"] == "cancelling"
    done = stack.wait(running["id"])
    assert done["status"] == "cancelled"
    result = done["result"]  # the partial TrainOutput
    assert result is not None and 0 < result["global_step"] < 100_000
    assert set(result) == {"global_step", "training_loss", "metrics"}
    checkpoint = stack.job_dir(running["id"]) / "output" / f"checkpoint-{result['global_step']}"
    assert is_complete(checkpoint)
    assert [a["outcome"] for a in stack.attempts(running["id"])] == ["cancelled"]

    # The worker then receives the cancelled job's wake-up and finds nothing to claim.
    log_files = list((stack.home / "logs").glob("worker-*.log"))
    deadline = time.monotonic() + 60
    while not any(
        f"woken by job {queued['id']}; nothing" in path.read_text(errors="replace")
        for path in log_files
    ):
        assert time.monotonic() < deadline, "the worker never consumed the cancelled job"
        time.sleep(0.2)
    after = stack.get(queued["id"])
    assert after["status"] == "cancelled"
    assert after["attempt"] == 0 and after["started_at"] is None
    assert stack.attempts(queued["id"]) == []

    # Finished jobs cannot be cancelled.
    for job_id in (queued["id"], running["id"]):
        response = stack.http.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 409
        assert response.json()["error"] == "conflict"


def test_cancel_after_success_is_409(stack: Stack) -> None:
    job = stack.submit(tiny_spec(name="cancel-after-finish"))
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    response = stack.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "conflict" and "succeeded" in body["detail"]
    assert stack.get(job["id"])["status"] == "succeeded"


def test_a_cancel_reaches_the_training_child_at_its_commit(stack: Stack) -> None:
    """Issue 22: a 2,000-step job cancelled at step ~50 ends `cancelled` well before its
    end. Its worker renews its lease every 10 minutes: only the notice of the cancel's
    commit (worker/control.py) can stop it in time (before, a cancel waited for the next
    renewal: 1.75 s, 75 steps, with a 5 s heartbeat)."""
    never = {"TRAINDEPOT_HEARTBEAT_SECONDS": "600", "TRAINDEPOT_LEASE_SECONDS": "1800"}
    with stack.extra_worker("prompt-cancel", queues="prompt-cancel", settings=never):
        job = stack.submit(
            tiny_spec(
                name="prompt-cancel",
                queue="prompt-cancel",
                training_args={"max_steps": 2000, "save_strategy": "no", "logging_steps": 1},
            )
        )
        deadline = time.monotonic() + 120
        while not any(step >= 50 for step in stack.train_steps(job["id"])):
            assert time.monotonic() < deadline, "training did not reach step 50"
            time.sleep(0.05)
        response = stack.http.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelling"
        done = stack.wait(job["id"], timeout=120)
    assert done["status"] == "cancelled", done
    assert done["cancel_requested_at"] is not None
    # Steps flushed after step 50 was visible, plus the steps of the notice's way to the
    # child: far from the 2,000 steps that a cancel at the next renewal would have let run.
    assert 50 <= done["result"]["global_step"] < 400, done["result"]


def test_a_job_that_ends_by_itself_after_a_cancel_keeps_its_cancel(stack: Stack) -> None:
    """Its last step was done when the cancel came: it ends `succeeded` (the whole run is
    there) and `GET /jobs/{id}` still shows who asked to cancel it and when (README: the
    cancel came too late). A pretend worker owns attempt 1, on a queue nobody serves."""
    from db import attempts, jobs
    from db.models import JobStatus
    from db.session import session_scope

    with session_scope() as session:
        job_id = jobs.create(session=session, spec={"name": "too-late", "queue": "nobody"}).id
    with session_scope() as session:
        assert attempts.claim(session=session, job_id=job_id, worker="w", lease_seconds=600) == 1
    cancel = stack.http.post(f"/jobs/{job_id}/cancel")
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelling"
    asked_at = cancel.json()["cancel_requested_at"]
    assert asked_at is not None and cancel.json()["cancelled_by"] is not None

    with session_scope() as session:  # the child's outcome: every step ran
        assert attempts.finish(
            session=session, job_id=job_id, attempt=1, status=JobStatus.SUCCEEDED, result={}
        )
    # The API serves the change once PostgreSQL's notice of it reaches its job cache.
    job = stack.wait(str(job_id), timeout=60)
    assert job["status"] == "succeeded"
    assert job["cancel_requested_at"] == asked_at
    assert job["cancelled_by"] == cancel.json()["cancelled_by"]
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 409
