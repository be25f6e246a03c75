"""Status changes made outside the worker's supervisor are published on the job's channel
too: a cancel of a queued job (the API) and a lost attempt (the reaper)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_foundation import Subscriber
from tests.integration.test_live import Read, read_events
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

NOBODY = "nobody-listens"  # a queue no worker takes jobs from: submitted jobs stay queued


def wait_for_messages(
    subscriber: Subscriber, wanted: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """The first `wanted` messages on the channel (a bound against hanging, not a timing
    assertion)."""
    deadline = time.monotonic() + timeout
    while len(subscriber.messages) < wanted:
        assert time.monotonic() < deadline, f"messages so far: {subscriber.messages}"
        time.sleep(0.05)
    return subscriber.messages[:wanted]


def test_cancelling_a_queued_job_publishes_status_and_end(stack: Stack) -> None:
    job = stack.submit(tiny_spec(name="cancel-queued-published", queue=NOBODY))
    subscriber = Subscriber(stack.redis_url, job["id"])
    # An SSE reader too, following the job live: wait for its first heartbeat, which comes
    # once it is subscribed and past the backlog.
    following = threading.Event()
    read: list[Read] = []
    reader = threading.Thread(
        target=lambda: read.append(
            read_events(stack.url, job["id"], params={"ping": 1}, on_ping=following.set)
        ),
        daemon=True,
    )
    reader.start()
    assert following.wait(60)

    response = stack.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    status, end = wait_for_messages(subscriber, 2)
    subscriber.close()
    assert status == {"type": "status", "status": "cancelled", "attempt": 0, "job_id": job["id"]}
    assert end == {
        "type": "end",
        "status": "cancelled",
        "result": None,
        "error": None,
        "job_id": job["id"],
    }

    # The SSE reader got the queued status, then the end (a terminal status is delivered as
    # `end`, never as a `status` event), and the stream closed.
    reader.join(60)
    assert not reader.is_alive()
    [sse] = read
    assert [(e.event, e.data["status"]) for e in sse.events] == [
        ("status", "queued"),
        ("end", "cancelled"),
    ]


def _fake_lost_attempt(stack: Stack, job_id: str) -> None:
    """Make the queued job look claimed by a worker that died: attempt 1, lease expired."""
    stack.sql(
        "WITH claimed AS ("
        " UPDATE jobs SET status = 'running', attempt = 1, lease_owner = 'ghost:1',"
        " lease_expires_at = now() - interval '1 second', started_at = now()"
        " WHERE id = %s AND status = 'queued' RETURNING id)"
        " INSERT INTO job_attempts (job_id, attempt, worker) SELECT id, 1, 'ghost:1' FROM claimed",
        uuid.UUID(job_id),
    )


def test_reaper_publishes_requeued_and_worker_lost(stack: Stack) -> None:
    # Restarts left: the reaper puts the job back in the queue, attempt 1 kept until the
    # next claim.
    requeued = stack.submit(tiny_spec(name="reaped-requeued", queue=NOBODY))
    subscriber = Subscriber(stack.redis_url, requeued["id"])
    _fake_lost_attempt(stack, requeued["id"])
    [status] = wait_for_messages(subscriber, 1)
    subscriber.close()
    assert status == {
        "type": "status",
        "status": "queued",
        "attempt": 1,
        "job_id": requeued["id"],
    }
    assert stack.http.post(f"/jobs/{requeued['id']}/cancel").json()["status"] == "cancelled"

    # No restart left: failed, worker_lost.
    failed = stack.submit(tiny_spec(name="reaped-failed", queue=NOBODY, limits={"max_restarts": 0}))
    subscriber = Subscriber(stack.redis_url, failed["id"])
    _fake_lost_attempt(stack, failed["id"])
    status, end = wait_for_messages(subscriber, 2)
    subscriber.close()
    assert status == {"type": "status", "status": "failed", "attempt": 1, "job_id": failed["id"]}
    assert end["type"] == "end" and end["status"] == "failed" and end["result"] is None
    assert end["error"]["reason"] == "worker_lost"
    assert [a["outcome"] for a in stack.attempts(failed["id"])] == ["lost"]
