"""Issue 14: retry a cancelled job under the same id (a new attempt from its checkpoint, the
step axis unbroken) and clone a job with overrides; both scoped to the caller's tenant."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration


def steps_past(stack: Stack, job_id: str, step: int) -> None:
    deadline = time.monotonic() + 120
    while not any(s > step for s in stack.train_steps(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} never trained past step {step}"
        time.sleep(0.1)


def test_retry_continues_from_the_checkpoint_and_clone_overrides(ready: Stack) -> None:
    stack = ready
    job = stack.submit(
        tiny_spec(
            name="retry-me",
            training_args={"max_steps": 100_000, "save_strategy": "no", "logging_steps": 1},
        )
    )
    job_id = job["id"]
    steps_past(stack, job_id, 0)
    assert stack.http.post(f"/jobs/{job_id}/retry").status_code == 409  # running
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    first = stack.wait(job_id)
    assert first["status"] == "cancelled"
    stopped_at = first["result"]["global_step"]

    retried = stack.http.post(f"/jobs/{job_id}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["id"] == job_id and retried.json()["status"] == "queued"
    assert retried.json()["result"] is None and retried.json()["finished_at"] is None
    steps_past(stack, job_id, stopped_at)
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    second = stack.wait(job_id)
    assert second["status"] == "cancelled" and second["attempt"] == 2
    assert second["result"]["global_step"] > stopped_at

    # A new attempt that resumed from the first one's checkpoint; one unbroken step axis.
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["cancelled", "cancelled"]
    assert attempts[1]["resumed_from_step"] == stopped_at
    steps = stack.train_steps(job_id)
    assert steps == list(range(1, second["result"]["global_step"] + 1))
    assert set(stack.train_steps(job_id, attempt=2)) == set(steps[stopped_at:])

    # Clone: the spec with a merge patch; `null` removes a key (the default applies).
    clone = stack.http.post(
        f"/jobs/{job_id}/clone",
        json={"overrides": {"name": "retry-me-clone", "training_args": {"max_steps": 2}}},
    )
    assert clone.status_code == 201, clone.text
    cloned = clone.json()
    assert cloned["id"] != job_id and cloned["name"] == "retry-me-clone"
    assert cloned["spec"]["training_args"]["max_steps"] == 2
    assert cloned["spec"]["model"] == job["spec"]["model"]
    done = stack.wait(cloned["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["global_step"] == 2
    # Succeeded: nothing to retry.
    again = stack.http.post(f"/jobs/{cloned['id']}/retry")
    assert again.status_code == 409 and "succeeded" in again.json()["detail"]

    # A bad override is a 422 naming the field, as on POST /jobs.
    bad = stack.http.post(
        f"/jobs/{job_id}/clone",
        json={"overrides": {"training_args": {"evaluation_strategy": "steps"}}},
    )
    assert bad.status_code == 422
    assert "evaluation_strategy" in bad.text
    bad_type = stack.http.post(f"/jobs/{job_id}/clone", json={"overrides": {"priority": "high"}})
    assert bad_type.status_code == 422 and bad_type.json()["detail"][0]["loc"] == ["priority"]

    # Another tenant sees none of it: every action is a 404.
    key = stack.new_key("team-actions")
    with httpx.Client(base_url=stack.url, timeout=60, headers=stack.headers(key)) as other:
        assert other.post(f"/jobs/{job_id}/retry").status_code == 404
        assert other.post(f"/jobs/{job_id}/clone", json={}).status_code == 404
        assert other.patch(f"/jobs/{job_id}", json={"priority": 1}).status_code == 404


def test_every_route_that_returns_a_job_answers_what_get_answers(ready: Stack) -> None:
    """Issue 22: submit, PATCH, cancel, retry and clone answer with the document `GET
    /jobs/{id}` answers with just after (a retry's body listed no attempts)."""
    stack = ready
    queue = "same-doc"  # no worker serves it while the routes are compared

    def same_as_get(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        webhooks = body.pop("webhooks", [])  # a submit's or a clone's secrets, there only
        assert webhooks == [] or response.request.method == "POST"
        # the parameter count of a submit or a clone (counted at validation, not stored)
        parameters = body.pop("parameters", None)
        assert parameters is None or response.request.method == "POST"
        assert body == stack.get(body["id"]), response.request.url
        return body

    # One attempt that ran, on a worker of its own, then cancelled.
    with stack.extra_worker("same-doc", queues=queue):
        submitted = same_as_get(
            stack.http.post(
                "/jobs",
                json=tiny_spec(
                    name="same-doc",
                    queue=queue,
                    training_args={"max_steps": 100_000, "save_strategy": "no"},
                ),
            ),
            201,
        )
        job_id = submitted["id"]
        steps_past(stack, job_id, 0)
        assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        assert stack.wait(job_id)["status"] == "cancelled"

    retried = same_as_get(stack.http.post(f"/jobs/{job_id}/retry"), 200)
    assert [a["outcome"] for a in retried["attempts"]] == ["cancelled"]
    assert retried["status"] == "queued" and retried["queue_position"] == 1
    patched = same_as_get(stack.http.patch(f"/jobs/{job_id}", json={"priority": 9}), 200)
    assert patched["priority"] == 9
    cancelled = same_as_get(stack.http.post(f"/jobs/{job_id}/cancel"), 200)
    assert cancelled["status"] == "cancelled" and len(cancelled["attempts"]) == 1
    clone = same_as_get(
        stack.http.post(f"/jobs/{job_id}/clone", json={"overrides": {"name": "same-doc-2"}}),
        201,
    )
    assert clone["status"] == "queued" and clone["attempts"] == []
    assert stack.http.post(f"/jobs/{clone['id']}/cancel").status_code == 200
