"""Issue 13: `GET /jobs/{id}` reads one statement that PostgreSQL turns into the document
(db/job_json.py) on an async connection, and answers from a per-process cache that drops a
job when PostgreSQL announces its change (api/job_docs.py). What a poller relies on:
- the document is the one the ORM builds (`JobOut.of`), in every state a job can be in;
- a change committed by anyone (a worker, the reaper, another API process, an operator's
  SQL) reaches the next reads, queue positions included, with no request of its own;
- the cache is used (reads are counted by source in `GET /metrics`), never across tenants,
  and is bypassed while its LISTEN connection is down.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import select

from api.job_docs import LISTENER
from api.schemas import JobOut
from db.models import Job, JobAttempt
from db.session import session_scope
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

SPEC = {"name": "read", "training_args": {"learning_rate": 0.001}}
QUEUES = "reads-"  # this module's jobs' queues: no worker serves them


@pytest.fixture(autouse=True)
def _remove_this_modules_jobs(stack: Stack) -> Iterator[None]:
    """Its jobs are rows only, some `running`: gone at each test's end."""
    yield
    stack.sql("DELETE FROM jobs WHERE queue LIKE %s", QUEUES + "%")


def _queue() -> str:
    return f"{QUEUES}{uuid.uuid4().hex[:8]}"


def _insert(stack: Stack, *, queue: str, status: str = "queued", **row: Any) -> str:
    """A job written as the service writes one (no worker serves `queue`)."""
    job_id = uuid.uuid4()
    columns = {
        "id": job_id,
        "name": "read",
        "tenant": "default",
        "status": status,
        "spec": json.dumps(SPEC),
        "queue": queue,
        "priority": 5,
        "attempt": 0,
        "max_restarts": 3,
        # As if sent to the broker: the reaper's re-sending (which writes the row, and so
        # drops it from the cache) leaves it alone.
        "enqueued_at": datetime.now(UTC),
        **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in row.items()},
    }
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    stack.sql(f"INSERT INTO jobs ({names}) VALUES ({marks})", *columns.values())
    return str(job_id)


def _attempt(stack: Stack, job_id: str, attempt: int, **row: Any) -> None:
    columns = {"job_id": uuid.UUID(job_id), "attempt": attempt, "worker": "host:1", **row}
    names = ", ".join(columns)
    marks = ", ".join(["%s"] * len(columns))
    stack.sql(f"INSERT INTO job_attempts ({names}) VALUES ({marks})", *columns.values())


def _as_the_orm_builds_it(stack: Stack, job_id: str, position: int | None) -> str:
    with session_scope(stack.database_url) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        attempts = list(
            session.scalars(
                select(JobAttempt).where(JobAttempt.job_id == job.id).order_by(JobAttempt.attempt)
            )
        )
        return JobOut.of(job, attempts=attempts, queue_position=position).model_dump_json()


def _samples(api: Stack | httpx.Client, name: str) -> list[Sample]:
    """The samples called `name` in an API process' `GET /metrics`."""
    text = (api.http if isinstance(api, Stack) else api).get("/metrics").text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _reads(api: Stack | httpx.Client) -> dict[str, float]:
    """`traindepot_job_reads_total` of an API process, by source."""
    return {s.labels["source"]: s.value for s in _samples(api, "traindepot_job_reads_total")}


def _eventually(read: Callable[[], Any], expected: Any, timeout: float = 15.0) -> None:
    """`read()` returns `expected` before `timeout` (a change's notice is asynchronous)."""
    deadline = time.monotonic() + timeout
    while (got := read()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, expected {expected!r}"
        time.sleep(0.05)


def _cached(stack: Stack, job_id: str) -> None:
    """Read until a read of the job is a cache hit (an admin's)."""
    _eventually(
        lambda: (
            (hits := _reads(stack).get("cache", 0)),
            stack.get(job_id),
            _reads(stack).get("cache", 0) > hits,
        )[2],
        True,
    )


def test_every_state_reads_as_the_orm_builds_it(stack: Stack) -> None:
    queue = _queue()
    first = _insert(stack, queue=queue, priority=9)
    second = _insert(stack, queue=queue, priority=5, progress={})  # an empty snapshot: null
    running = _insert(
        stack,
        queue=queue,
        status="running",
        attempt=1,
        started_at="2026-01-02T03:04:05.123456+00:00",
        # Keys the schema does not name are not part of the document.
        progress={"global_step": 7, "max_steps": 10, "loss": 2.5, "epoch": 1, "extra": 1},
    )
    _attempt(stack, running, 1, start="warm", resumed_from_step=5)
    succeeded = _insert(
        stack,
        queue=queue,
        status="succeeded",
        attempt=2,
        disk_bytes=12_345,
        finished_at="2026-01-02T04:00:00+00:00",
        result={"global_step": 10, "training_loss": 1.25, "metrics": {"train_runtime": 3.5}},
    )
    _attempt(stack, succeeded, 1, outcome="lost", ended_at="2026-01-02T03:30:00+00:00")
    _attempt(stack, succeeded, 2, outcome="succeeded", start="cold")
    failed = _insert(
        stack,
        queue=queue,
        status="failed",
        attempt=1,
        cancel_requested_at="2026-01-02T03:05:00+00:00",
        error={
            "type": "ValueError",
            "message": 'bad \u00e9 "quoted"\nline',
            "traceback": "Traceback (most recent call last):\n  ...",
            "reason": "exception",
            "step": 3,
            "rank": 1,
        },
    )
    _attempt(stack, failed, 1, outcome="failed")

    for job_id, position in (
        (first, 1),
        (second, 2),
        (running, None),
        (succeeded, None),
        (failed, None),
    ):
        for _ in range(2):  # from the database, then from the cache
            response = stack.http.get(f"/jobs/{job_id}")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/json"
            assert response.text == _as_the_orm_builds_it(stack, job_id, position)
    body = stack.get(second)
    assert body["progress"] is None and body["queue_position"] == 2
    assert "extra" not in stack.get(running)["progress"]


def test_reads_are_served_from_the_cache(stack: Stack) -> None:
    job_id = _insert(stack, queue=_queue())
    _cached(stack, job_id)  # (its insert's notice may refuse the first read's fill)
    before = _reads(stack)
    for _ in range(20):
        stack.get(job_id)
    after = _reads(stack)
    # Other tests' reads may run on this API meanwhile; these twenty all hit the cache.
    assert after.get("cache", 0) - before.get("cache", 0) >= 20


def test_a_change_committed_elsewhere_reaches_cached_reads(stack: Stack) -> None:
    queue = _queue()
    ahead = _insert(stack, queue=queue, priority=9)
    behind = _insert(stack, queue=queue, priority=1)
    assert stack.get(behind)["queue_position"] == 2
    stack.get(behind)  # cached now

    # A worker claims the job ahead: the notice names the queue, so `behind` moves up
    # although its own row did not change.
    stack.sql(
        "UPDATE jobs SET status = 'running', attempt = 1, started_at = now() WHERE id = %s",
        uuid.UUID(ahead),
    )
    _eventually(lambda: stack.get(behind)["queue_position"], 1)
    _eventually(lambda: stack.get(ahead)["status"], "running")

    # Its flusher writes a progress snapshot; its attempt starts and ends.
    stack.get(ahead)
    stack.sql("UPDATE jobs SET progress = '{\"global_step\": 3}' WHERE id = %s", uuid.UUID(ahead))
    _eventually(lambda: (stack.get(ahead)["progress"] or {}).get("global_step"), 3)
    _attempt(stack, ahead, 1, start="warm")
    _eventually(lambda: [a["start"] for a in stack.get(ahead)["attempts"]], ["warm"])
    stack.sql(
        "UPDATE job_attempts SET outcome = 'failed', ended_at = now() WHERE job_id = %s",
        uuid.UUID(ahead),
    )
    _eventually(lambda: stack.get(ahead)["attempts"][0]["outcome"], "failed")

    # Deleted (`DELETE /jobs/{id}` or gc): gone from the cache too.
    stack.sql("DELETE FROM jobs WHERE id = %s", uuid.UUID(behind))
    _eventually(lambda: stack.http.get(f"/jobs/{behind}").status_code, 404)


def test_the_apis_own_writes_are_read_back_at_once(stack: Stack) -> None:
    job_id = _insert(stack, queue=_queue())
    assert stack.get(job_id)["priority"] == 5
    stack.get(job_id)  # cached now
    patched = stack.http.patch(f"/jobs/{job_id}", json={"priority": 8})
    assert patched.status_code == 200, patched.text
    assert stack.get(job_id)["priority"] == 8  # no wait: this process committed it
    cancelled = stack.http.post(f"/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert stack.get(job_id)["status"] == "cancelled"


def test_a_cached_job_is_still_another_tenants_secret(stack: Stack) -> None:
    job_id = _insert(stack, queue=_queue())
    stack.get(job_id)  # cached, read by an admin
    stranger = stack.headers(stack.new_key("reads-stranger"))
    for _ in range(2):
        response = httpx.get(f"{stack.url}/jobs/{job_id}", headers=stranger)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
    owner = stack.headers(stack.new_key("default"))
    assert httpx.get(f"{stack.url}/jobs/{job_id}", headers=owner).status_code == 200


def _listeners(stack: Stack) -> list[int]:
    rows = stack.sql(
        "SELECT pid FROM pg_stat_activity"
        " WHERE application_name = %s AND datname = current_database()",
        LISTENER,
    )
    return [row[0] for row in rows]


def test_a_cut_listener_is_replaced_and_no_change_is_missed(stack: Stack) -> None:
    job_id = _insert(stack, queue=_queue())
    _eventually(lambda: len(_listeners(stack)) >= 1, True)
    stack.get(job_id)
    stack.get(job_id)  # cached
    old = set(_listeners(stack))
    for pid in old:
        stack.sql("SELECT pg_terminate_backend(%s)", pid)
    # Changed while the listener is down: no notice reaches the API for this change.
    stack.sql("UPDATE jobs SET priority = 7 WHERE id = %s", uuid.UUID(job_id))
    _eventually(lambda: stack.get(job_id)["priority"], 7)
    # A new listener takes over, and the cache works again, still fresh.
    _eventually(lambda: bool(set(_listeners(stack)) - old), True)
    stack.sql("UPDATE jobs SET priority = 2 WHERE id = %s", uuid.UUID(job_id))
    _eventually(lambda: stack.get(job_id)["priority"], 2)
    _cached(stack, job_id)


def test_without_the_cache_every_read_goes_to_the_database(stack: Stack) -> None:
    job_id = _insert(stack, queue=_queue())
    with stack.extra_api("uncached", {"TRAINDEPOT_API_JOB_CACHE_MIB": "0"}) as url:
        client = httpx.Client(base_url=url, headers=stack.headers(), timeout=30)
        first = client.get(f"/jobs/{job_id}")
        assert first.status_code == 200, first.text
        stack.sql("UPDATE jobs SET priority = 6 WHERE id = %s", uuid.UUID(job_id))
        assert client.get(f"/jobs/{job_id}").json()["priority"] == 6  # no notice needed
        reads = _reads(client)
        assert reads.get("database") == 2 and reads.get("cache", 0) == 0


def _route_count(api: Stack, route: str) -> float:
    """How many 200s of `route` the API's latency histogram has counted."""
    return sum(
        sample.value
        for sample in _samples(api, "traindepot_http_request_duration_seconds_count")
        if sample.labels.get("route") == route and sample.labels.get("status") == "200"
    )


def test_a_cached_answer_is_the_routes_own(stack: Stack) -> None:
    """Cache hits are answered before FastAPI (api/cached_reads.py): the same answer, and
    timed under the route's template."""
    job_id = _insert(stack, queue=_queue())
    first = stack.http.get(f"/jobs/{job_id}")
    _cached(stack, job_id)
    before = _route_count(stack, "/jobs/{job_id}")
    hits = _reads(stack).get("cache", 0)
    for _ in range(10):
        hit = stack.http.get(f"/jobs/{job_id}")
        assert hit.status_code == 200 and hit.content == first.content
        for header in ("content-type", "content-length"):
            assert hit.headers[header] == first.headers[header]
    assert _reads(stack).get("cache", 0) - hits >= 10
    assert _route_count(stack, "/jobs/{job_id}") - before >= 10


def test_a_cached_job_is_refused_to_a_revoked_or_missing_key(stack: Stack) -> None:
    created = stack.http.post("/keys", json={"tenant": "default", "name": "reader"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["id"]
    job_id = _insert(stack, queue=_queue())
    with httpx.Client(base_url=stack.url, headers=stack.headers(key), timeout=30) as reader:
        for _ in range(3):  # the job and the key both cached
            assert reader.get(f"/jobs/{job_id}").status_code == 200
        assert stack.http.delete(f"/keys/{key_id}").status_code == 200
        _cached(stack, job_id)  # (the revoke's commit emptied this process' job cache)
        refused = reader.get(f"/jobs/{job_id}")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"
    for headers in (
        {},
        {"Authorization": "Bearer td_not_a_key"},
        {"Authorization": f"Basic {key}"},
        {"Authorization": f"Bearer{key}"},
    ):
        _cached(stack, job_id)
        response = httpx.get(f"{stack.url}/jobs/{job_id}", headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error"] == "unauthorized"
