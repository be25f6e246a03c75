"""Issue 2: a job goes from POST /jobs to a stored TrainOutput, through the real services."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Stack, threads_of_the_jobs
from tests.specs import tiny_spec
from traindepot.events import channel

pytestmark = pytest.mark.integration


def plain_trainer_run(spec: dict[str, Any], output_dir: Path) -> Any:
    """What a user writes without traindepot: `tiny_spec`'s configuration as a plain
    `Trainer.train()` script (tests/integration/plain_scripts.py)."""
    from tests.integration import plain_scripts

    return plain_scripts.causal_lm_from_config(
        [row["text"] for row in spec["dataset"]["rows"]],
        model_config=spec["model"]["from_config"],
        max_length=spec["preprocessing"]["max_length"],
        training_args=spec["training_args"],
        output_dir=output_dir,
    )


class Subscriber:
    """Collects every message on a job's Redis channel, in a thread."""

    def __init__(self, redis_url: str, job_id: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.batches: list[dict[str, Any]] = []
        self._pubsub = redis.Redis.from_url(redis_url).pubsub()  # type: ignore[no-untyped-call, unused-ignore]
        self._pubsub.subscribe(channel(job_id))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                data = json.loads(message["data"])
                if data.get("type") == "points":  # one flush: its points, in order
                    self.batches.append(data)
                    self.messages.extend(data["points"])
                else:
                    self.messages.append(data)

    def close(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()
        return self.messages


def test_job_succeeds_and_stores_train_output(stack: Stack, tmp_path: Path) -> None:
    spec = tiny_spec(name="foundation-success")
    response = stack.http.post("/jobs", json=spec)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0
    assert job["spec"]["preprocessing"]["padding"] == "max_length"  # defaults filled in
    subscriber = Subscriber(stack.redis_url, job["id"])

    done = stack.wait(job["id"])
    messages = subscriber.close()
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 1
    assert done["started_at"] and done["finished_at"]

    # The attempt history: one attempt, from the start, that ended `succeeded`.
    assert job["attempts"] == []  # submit does not read it
    [attempt] = done["attempts"]
    assert attempt["attempt"] == 1 and attempt["outcome"] == "succeeded"
    assert attempt["resumed_from_step"] is None
    assert attempt["worker"] == stack.attempts(job["id"])[0]["worker"] != ""
    started, ended = (datetime.fromisoformat(attempt[k]) for k in ("started_at", "ended_at"))
    assert started <= ended

    with threads_of_the_jobs():
        expected = plain_trainer_run(spec, tmp_path / "plain")
    result = done["result"]
    assert result["global_step"] == expected.global_step == 6
    assert result["training_loss"] == pytest.approx(expected.training_loss, rel=1e-6)
    assert set(result["metrics"]) == set(expected.metrics)
    assert "total_flos" in result["metrics"]  # not popped by a printer callback

    # The history: one row per logged step, in step order.
    rows = stack.sql(
        "SELECT step, values FROM job_metrics WHERE job_id = %s AND kind = 'train' ORDER BY id",
        uuid.UUID(job["id"]),
    )
    assert [step for step, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "learning_rate", "grad_norm"} <= set(values) for _, values in rows)

    # The progress snapshot follows the last logged step.
    progress = done["progress"]
    assert progress["global_step"] == 6 and progress["max_steps"] == 6
    assert progress["loss"] == pytest.approx(rows[-1][1]["loss"])

    # Each logged step was published live, then the end of the job.
    logged = [m["step"] for m in messages if m.get("type") == "train"]
    assert logged == [1, 2, 3, 4, 5, 6]
    assert messages[-1]["type"] == "end" and messages[-1]["status"] == "succeeded"
    assert messages[-1]["result"] == result


def test_missing_text_column_fails_with_traceback(stack: Stack) -> None:
    spec = tiny_spec(name="no-text-column", dataset={"rows": [{"body": "hello"}] * 4})
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    error = done["error"]
    assert error["type"] == "DataError"
    assert error["reason"] == "data"
    assert "'text'" in error["message"] and "body" in error["message"]
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "build_datasets" in error["traceback"]
    assert done["result"] is None


def test_unknown_job_is_404_json(stack: Stack) -> None:
    response = stack.http.get(f"/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    response = stack.http.get("/jobs/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_list_jobs_newest_first_with_cursor(stack: Stack) -> None:
    # Queued with an invalid queue name nobody serves would be rejected; instead we page
    # over what exists plus three new cancelled jobs (cancelled at once while queued).
    ids = []
    for i in range(3):
        job = stack.submit(tiny_spec(name=f"page-{i}", queue="nobody-listens"))
        ids.append(job["id"])
        assert stack.http.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "status": "cancelled"}
        if cursor:
            params["cursor"] = cursor
        page = stack.http.get("/jobs", params=params).json()
        assert all(item["status"] == "cancelled" for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:3] == list(reversed(ids))
    assert len(seen) == len(set(seen))
    bad = stack.http.get("/jobs", params={"cursor": "garbage!"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    bad = stack.http.get("/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422
