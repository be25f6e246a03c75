"""Issue 14: the jobs table decides what runs next (db/scheduling.py), on real workers.

- jobs submitted while the only worker is busy run in effective-priority order;
- aging: a priority-0 job runs before a stream of priority-5 jobs once they were submitted
  more than 5 x aging after it (a stack of its own, with a 1 s aging step);
- a requeued job (warm shutdown) keeps its place before jobs submitted after it;
- `GET /jobs/{id}` shows a queued job's position; `PATCH /jobs/{id}` moves it;
- a worker with 2 slots runs two 1-slot jobs at once and a 2-slot job alone, and a job no
  worker of its queue can fit is a 422.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from tests.integration.conftest import TEST_SETTINGS, Stack, session_database_stack
from tests.specs import tiny_spec
from traindepot.stack import stop_process

pytestmark = pytest.mark.integration

# A priority step per 0.4 s of waiting: a priority-5 job submitted more than 2 s after a
# priority-0 one ranks behind it.
AGING_SECONDS = 0.4


def blocker_spec(name: str) -> dict[str, Any]:
    """Trains until cancelled: keeps the only worker busy while a test fills the queue."""
    return tiny_spec(
        name=name, training_args={"max_steps": 100_000, "save_strategy": "no", "logging_steps": 1}
    )


def quick_spec(name: str, priority: int) -> dict[str, Any]:
    return tiny_spec(name=name, priority=priority, training_args={"max_steps": 1})


@contextmanager
def busy_worker(stack: Stack, name: str) -> Iterator[dict[str, Any]]:
    """The only worker trains a job until the test cancels it (or the block ends)."""
    blocker = stack.submit(blocker_spec(name))
    try:
        wait_training(stack, blocker["id"])
        yield blocker
    finally:
        stack.http.post(f"/jobs/{blocker['id']}/cancel")


def wait_training(stack: Stack, job_id: str) -> None:
    stack.wait(job_id, until={"running"}, timeout=120)
    deadline = time.monotonic() + 120
    while not stack.train_steps(job_id):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)


def start_order(stack: Stack, ids: list[str]) -> list[str]:
    """The jobs in the order their first attempt was claimed."""
    rows = stack.sql(
        "SELECT job_id FROM job_attempts WHERE job_id = ANY(%s) AND attempt = 1"
        " ORDER BY started_at, job_id",
        [uuid.UUID(i) for i in ids],
    )
    return [str(row[0]) for row in rows]


# 31 training children one after the other: about 2 minutes on a quiet 2-core machine, far
# longer on a loaded one (each child imports torch and transformers).
@pytest.mark.timeout(1800)
def test_queued_jobs_run_in_priority_order_and_show_their_position(ready: Stack) -> None:
    stack = ready
    with busy_worker(stack, "sched-blocker") as blocker:
        priorities = [(n * 7) % 10 for n in range(30)]  # every priority 0..9, three times, mixed
        submitted = [stack.submit(quick_spec(f"sched-{n}", p)) for n, p in enumerate(priorities)]
        ids = [job["id"] for job in submitted]
        # Most urgent first; equal priorities in submission order (the default aging, 600 s per
        # priority step, is far longer than this test's submissions take).
        expected = [ids[n] for n in sorted(range(30), key=lambda n: (-priorities[n], n))]

        positions = {job_id: stack.get(job_id)["queue_position"] for job_id in ids}
        assert [positions[job_id] for job_id in expected] == list(range(1, 31))
        assert stack.get(blocker["id"])["queue_position"] is None  # running

        # PATCH: the last of the queue becomes the most urgent, then goes back where it was.
        last = expected[-1]
        moved = stack.http.patch(f"/jobs/{last}", json={"priority": 9})
        assert moved.status_code == 200, moved.text
        assert moved.json()["priority"] == 9
        # Its wait counts: after the two priority-9 jobs submitted before it, not the third.
        assert stack.get(last)["queue_position"] == 3
        back = stack.http.patch(f"/jobs/{last}", json={"priority": priorities[ids.index(last)]})
        assert back.status_code == 200 and stack.get(last)["queue_position"] == 30
        # Not queued: its priority no longer decides anything.
        refused = stack.http.patch(f"/jobs/{blocker['id']}", json={"priority": 1})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["priority"]
        assert "running" in refused.json()["detail"][0]["msg"]
        assert stack.http.patch(f"/jobs/{last}", json={"priority": 10}).status_code == 422
        assert stack.http.patch(f"/jobs/{last}", json={"name": "x"}).status_code == 422
        assert stack.http.patch(f"/jobs/{uuid.uuid4()}", json={"priority": 1}).status_code == 404
        assert stack.http.post(f"/jobs/{blocker['id']}/cancel").status_code == 200
    # One after the other: the last one waits for all the others.
    finals = [stack.wait(job_id, timeout=1500) for job_id in expected]
    assert {f["status"] for f in finals} == {"succeeded"}, [f["error"] for f in finals]
    assert start_order(stack, ids) == expected


@pytest.fixture(scope="module")
def aging_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose queued jobs gain a priority step per `AGING_SECONDS` of waiting."""
    with session_database_stack(
        tmp_path_factory,
        "aging",
        {
            "TRAINDEPOT_AGING_SECONDS_PER_PRIORITY": str(AGING_SECONDS),
            "TRAINDEPOT_QUEUES": TEST_SETTINGS["TRAINDEPOT_QUEUES"] + ",slots",
        },
    ) as s:
        from traindepot.stack import wait_until_up

        wait_until_up(s.url, timeout=600, path="/readyz")
        yield s


def test_aging_runs_a_low_priority_job_before_an_endless_stream(aging_stack: Stack) -> None:
    stack = aging_stack
    with busy_worker(stack, "aging-blocker"):
        low = stack.submit(quick_spec("aging-low", 0))
        stream = [stack.submit(quick_spec("aging-high-0", 5))]
    # Priority-5 jobs keep coming for as long as the low one waits, four a second: faster than
    # the worker runs them (a quiet machine runs a 1-step job in about half a second; at one a
    # second it emptied the queue and ran the low job before it had aged past the stream).
    deadline = time.monotonic() + 300
    while stack.get(low["id"])["status"] == "queued":
        assert time.monotonic() < deadline, "the priority-0 job starved"
        stream.append(stack.submit(quick_spec(f"aging-high-{len(stream)}", 5)))
        time.sleep(0.25)
    stack.wait(low["id"])
    for job in stream:
        stack.http.post(f"/jobs/{job['id']}/cancel")  # those still queued: not needed

    def queued_at(job_id: str) -> Any:
        return stack.sql("SELECT queued_at FROM jobs WHERE id = %s", uuid.UUID(job_id))[0][0]

    overtake = queued_at(low["id"]) + timedelta(seconds=5 * AGING_SECONDS)
    started = {
        row: n for n, row in enumerate(start_order(stack, [low["id"], *(j["id"] for j in stream)]))
    }
    before_low = [j["id"] for j in stream if started.get(j["id"], 10**6) < started[low["id"]]]
    # Every priority-5 job that ran first was submitted less than 5 aging steps after it...
    assert all(queued_at(job_id) < overtake for job_id in before_low)
    # ... and the stream went on past that point: some came later and waited.
    assert any(queued_at(j["id"]) >= overtake for j in stream)
    assert before_low, "the priority-5 jobs submitted with it ran first"


def test_requeued_job_keeps_its_place(aging_stack: Stack) -> None:
    """A job handed back by a warm shutdown runs before the jobs submitted after it, all at
    the same priority."""
    stack = aging_stack
    first = stack.submit(
        tiny_spec(
            name="requeue-first",
            training_args={"max_steps": 100_000, "save_strategy": "no", "logging_steps": 1},
            limits={"max_runtime_seconds": 600},
        )
    )
    wait_training(stack, first["id"])
    later = [stack.submit(quick_spec(f"requeue-later-{n}", 5)) for n in range(2)]
    worker = stack.workers[0]
    stop_process(worker, timeout=60)  # SIGTERM: checkpoint, release, exit
    stack.workers.remove(worker)
    assert stack.get(first["id"])["status"] == "queued"
    assert stack.get(first["id"])["queue_position"] == 1
    stack.start_worker("after-requeue")
    job = stack.wait(first["id"], until={"running"}, timeout=120)
    assert job["attempt"] == 2
    assert all(stack.get(j["id"])["status"] == "queued" for j in later)
    assert stack.http.post(f"/jobs/{first['id']}/cancel").status_code == 200
    for j in later:
        assert stack.wait(j["id"])["status"] == "succeeded"
    assert stack.wait(first["id"])["status"] == "cancelled"


def test_two_slots_run_two_small_jobs_at_once_and_a_big_one_alone(aging_stack: Stack) -> None:
    stack = aging_stack
    worker = stack.start_worker("slots", queues="slots", args=("--slots", "2"))
    try:
        # Registered (its device probe answered): a job no worker of the queue fits is a 422.
        too_big = tiny_spec(name="too-big", queue="slots", resources={"gpus": 3})
        deadline = time.monotonic() + 180
        while (answer := stack.http.post("/jobs/validate", json=too_big)).status_code == 200:
            assert time.monotonic() < deadline, "the 2-slot worker never registered"
            time.sleep(0.5)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["resources", "gpus"]
        assert "owns 2" in answer.json()["detail"][0]["msg"]

        small = [
            stack.submit({**blocker_spec(f"slot-small-{n}"), "queue": "slots"}) for n in range(2)
        ]
        big = stack.submit(quick_spec("slot-big", 5) | {"queue": "slots", "resources": {"gpus": 2}})
        for job in small:  # both at once, on the one worker
            wait_training(stack, job["id"])
        assert stack.get(big["id"])["status"] == "queued"
        assert stack.http.post(f"/jobs/{small[0]['id']}/cancel").status_code == 200
        assert stack.wait(small[0]["id"])["status"] == "cancelled"
        # One slot is free, the big job needs both: it waits (and nothing smaller is queued).
        assert stack.get(big["id"])["status"] == "queued"
        assert stack.http.post(f"/jobs/{small[1]['id']}/cancel").status_code == 200
        assert stack.wait(small[1]["id"])["status"] == "cancelled"
        assert stack.wait(big["id"])["status"] == "succeeded"
    finally:
        stop_process(worker, timeout=60)
        stack.workers.remove(worker)
    spans = {job["id"]: stack.attempts(job["id"])[0] for job in (*small, big)}
    first, second = (spans[job["id"]] for job in small)
    assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"]
    assert spans[big["id"]]["started_at"] >= max(first["ended_at"], second["ended_at"])
    assert all(a["worker"] == spans[big["id"]]["worker"] for a in spans.values())
