"""Issue 5: following a job live (SSE events, downsampled metrics, the log), through the real
API over HTTP, a real worker, Postgres and Redis."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, api_key_headers
from tests.specs import tiny_spec
from traindepot.embedded import free_port

pytestmark = pytest.mark.integration

STEPS = 30
EVAL_STEPS = 15
POINT_EVENTS = {"train", "eval", "summary", "restart"}
PROGRESS_FIELDS = {
    "global_step",
    "max_steps",
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "samples_per_second",
    "eta_seconds",
    "updated_at",
}


@dataclass
class Event:
    event: str
    id: str | None
    data: Any


@dataclass
class Read:
    events: list[Event] = field(default_factory=list)
    pings: int = 0
    status_code: int = 0

    @property
    def points(self) -> list[Event]:
        return [e for e in self.events if e.event in POINT_EVENTS]

    def steps(self, kind: str = "train") -> list[int]:
        return [e.data["step"] for e in self.events if e.event == kind]


def read_events(
    url: str,
    job_id: str,
    *,
    last_event_id: str | None = None,
    stop_after_points: int | None = None,
    stop_after_pings: int | None = None,
    params: dict[str, Any] | None = None,
    on_ping: Any = None,
) -> Read:
    """An SSE client: reads `GET /jobs/{id}/events` until the server closes the stream (or
    until a given count, then disconnects)."""
    import json

    headers = {"Accept": "text/event-stream", **api_key_headers()}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    read = Read()
    fields: dict[str, str] = {}
    data: list[str] = []
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=120)) as client,
        client.stream("GET", f"/jobs/{job_id}/events", headers=headers, params=params) as resp,
    ):
        read.status_code = resp.status_code
        if resp.status_code != 200:
            resp.read()
            return read
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith(":"):
                read.pings += 1
                if on_ping is not None:
                    on_ping()
                if stop_after_pings is not None and read.pings >= stop_after_pings:
                    return read
                continue
            if line:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
                continue
            if data:  # a blank line dispatches the event
                read.events.append(
                    Event(
                        fields.get("event", "message"),
                        fields.get("id"),
                        json.loads("\n".join(data)),
                    )
                )
            fields, data = {}, []
            if stop_after_points is not None and len(read.points) >= stop_after_points:
                return read
    return read


def live_spec(name: str, steps: int = STEPS, **training_args: Any) -> dict[str, Any]:
    return tiny_spec(
        name=name,
        dataset={"eval_fraction": 0.25},
        training_args={
            "max_steps": steps,
            "eval_strategy": "steps",
            "eval_steps": EVAL_STEPS,
            "per_device_eval_batch_size": 4,
            **training_args,
        },
    )


@dataclass
class LiveJob:
    job: dict[str, Any]  # GET /jobs/{id} once it ended
    first: Read  # the live stream, up to the disconnect
    resumed: Read  # the stream resumed with Last-Event-ID


@pytest.fixture(scope="module")
def live_job(stack: Stack) -> LiveJob:
    """A job followed from submission: the client disconnects after 10 points and resumes
    from the last event id it had."""
    job = stack.submit(live_spec("live"))
    first = read_events(stack.url, job["id"], stop_after_points=10)
    assert first.status_code == 200 and first.events
    resumed = read_events(stack.url, job["id"], last_event_id=first.events[-1].id)
    done = stack.wait(job["id"])
    return LiveJob(done, first, resumed)


def test_sse_delivers_every_step_in_order_then_end(live_job: LiveJob) -> None:
    events = live_job.first.events + live_job.resumed.events
    assert live_job.job["status"] == "succeeded", live_job.job["error"]

    # Every logged step once, in order, across the disconnect; the evaluations and the
    # end-of-training summary too.
    train = [e.data["step"] for e in events if e.event == "train"]
    assert train == list(range(1, STEPS + 1))
    assert [e.data["step"] for e in events if e.event == "eval"] == [EVAL_STEPS, STEPS]
    assert [e.data["step"] for e in events if e.event == "summary"] == [STEPS]
    assert all(
        {"loss", "learning_rate", "grad_norm"} <= e.data["values"].keys()
        for e in events
        if e.event == "train"
    )

    # Status changes came before the points; the terminal event is last, with the result.
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert statuses and statuses[-1] == "running"
    assert events.index(next(e for e in events if e.event == "status")) == 0
    end = events[-1]
    assert end.event == "end" and [e for e in events if e.event == "end"] == [end]
    assert end.data["status"] == "succeeded"
    assert end.data["result"] == live_job.job["result"]

    # Every event has an id; point ids grow, and the end's id orders after all of them.
    ids = [e.id for e in events]
    assert all(ids)
    point_ids = [int(e.data["id"]) for e in events if e.event in POINT_EVENTS]
    assert point_ids == sorted(point_ids) and len(set(point_ids)) == len(point_ids)
    cursors = [tuple(map(int, str(i).split("-"))) for i in ids]
    assert cursors == sorted(cursors)
    assert cursors[-1] > cursors[-2]


def test_reconnecting_resumes_without_loss_or_repeat(stack: Stack, live_job: LiveJob) -> None:
    job_id = live_job.job["id"]
    live = live_job.first.events + live_job.resumed.events
    assert len(live_job.first.points) == 10 and live_job.resumed.points

    # The finished job replayed from the database: the same points, the same ids.
    replay = read_events(stack.url, job_id)
    assert [e.event for e in replay.events] == [
        e.event for e in live if e.event not in ("status", "progress")
    ]
    assert [(e.data["id"], e.data["step"]) for e in replay.points] == [
        (e.data["id"], e.data["step"]) for e in live if e.event in POINT_EVENTS
    ]
    for got, want in zip(replay.points, (e for e in live if e.event in POINT_EVENTS), strict=True):
        assert got.data["values"] == pytest.approx(want.data["values"])

    # Resume at any event: exactly the rest of the stream follows.
    for cut in (1, 7, len(replay.events) - 2):
        rest = read_events(stack.url, job_id, last_event_id=replay.events[cut].id)
        assert [(e.event, e.id) for e in rest.events] == [
            (e.event, e.id) for e in replay.events[cut + 1 :]
        ]
    # The `?after=` form, for clients that cannot set the header.
    rest = read_events(stack.url, job_id, params={"after": replay.events[3].id})
    assert [e.id for e in rest.events] == [e.id for e in replay.events[4:]]
    # After the end there is nothing more: 204 tells an EventSource to stop reconnecting.
    assert read_events(stack.url, job_id, last_event_id=replay.events[-1].id).status_code == 204


def test_progress_snapshot(live_job: LiveJob, stack: Stack) -> None:
    progress = live_job.job["progress"]
    assert progress.keys() >= PROGRESS_FIELDS
    assert progress["global_step"] == progress["max_steps"] == STEPS
    assert progress["eta_seconds"] == 0
    assert progress["samples_per_second"] > 0
    last_train = [e for e in live_job.resumed.events if e.event == "train"][-1]
    assert progress["loss"] == pytest.approx(last_train.data["values"]["loss"])
    assert progress["grad_norm"] == pytest.approx(last_train.data["values"]["grad_norm"])


def test_metrics_downsampled_keep_first_last_min_max(stack: Stack, live_job: LiveJob) -> None:
    job_id = live_job.job["id"]
    rows = stack.sql(
        "SELECT step, values->'loss' FROM job_metrics WHERE job_id = %s AND kind = 'train' "
        "ORDER BY step",
        uuid.UUID(job_id),
    )
    full = [(step, float(loss)) for step, loss in rows]
    assert len(full) == STEPS

    whole = stack.http.get(f"/jobs/{job_id}/metrics", params={"keys": "loss,eval_loss"}).json()
    assert [tuple(p) for p in whole["series"]["loss"]["points"]] == full
    assert whole["series"]["loss"]["count"] == STEPS
    assert [p[0] for p in whole["series"]["eval_loss"]["points"]] == [EVAL_STEPS, STEPS]

    small = stack.http.get(
        f"/jobs/{job_id}/metrics", params={"keys": "loss", "max_points": 8}
    ).json()
    kept = [tuple(p) for p in small["series"]["loss"]["points"]]
    assert 4 <= len(kept) <= 8 and small["series"]["loss"]["count"] == STEPS
    assert kept[0] == full[0] and kept[-1] == full[-1]
    assert min(full, key=lambda p: p[1]) in kept and max(full, key=lambda p: p[1]) in kept

    nothing = stack.http.get(f"/jobs/{job_id}/metrics", params={"keys": "no_such_metric"})
    assert nothing.json()["series"]["no_such_metric"] == {
        "count": 0,
        "sampled": False,
        "points": [],
    }
    bad = stack.http.get(f"/jobs/{job_id}/metrics", params={"keys": ",", "max_points": 8})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert stack.http.get(f"/jobs/{job_id}/metrics", params={"max_points": 2}).status_code == 422


def test_logs_tail(stack: Stack, live_job: LiveJob) -> None:
    job_id = live_job.job["id"]
    log = (stack.home / "jobs" / job_id / "train.log").read_text()
    response = stack.http.get(f"/jobs/{job_id}/logs", params={"tail": 5})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.splitlines() == log.splitlines()[-5:]
    # The flusher's JSON lines are in the log: one per logged point, the last step among them.
    points = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [p["step"] for p in points if "loss" in p] == list(range(1, 31))
    # follow=true on a finished job: the tail, then the stream ends.
    followed = stack.http.get(f"/jobs/{job_id}/logs", params={"tail": 3, "follow": True})
    assert followed.text.splitlines() == log.splitlines()[-3:]


def test_heartbeats_then_a_cancel_ends_the_stream(stack: Stack) -> None:
    """A queued job nobody serves: the stream sends heartbeats while nothing happens; a cancel
    sent meanwhile (`POST /jobs/{id}/cancel` publishes the new status after its commit)
    reaches the reader as the `cancelled` status, and the stream ends with the job."""
    job = stack.submit(tiny_spec(name="sse-idle", queue="nobody-listens"))
    cancelled = threading.Event()

    def cancel_once() -> None:
        if not cancelled.is_set():
            cancelled.set()
            assert stack.http.post(f"/jobs/{job['id']}/cancel").status_code == 200

    read = read_events(stack.url, job["id"], params={"ping": 1}, on_ping=cancel_once)
    assert read.pings >= 1
    assert [e.event for e in read.events] == ["status", "end"]
    assert read.events[0].data == {"status": "queued", "attempt": 0}
    assert read.events[1].data["status"] == "cancelled"


@pytest.fixture
def api_without_redis(stack: Stack) -> Iterator[str]:
    """A second API process whose Redis URL points at a port nobody listens on."""
    nobody = {"TRAINDEPOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with stack.extra_api("no-redis", nobody) as url:
        yield url


def test_redis_down_falls_back_to_polling_the_database(
    stack: Stack, api_without_redis: str
) -> None:
    job = stack.submit(live_spec("sse-no-redis", steps=8))
    followed: list[str] = []

    def follow_log() -> None:
        with (
            httpx.Client(
                base_url=stack.url, timeout=httpx.Timeout(10, read=120), headers=stack.headers()
            ) as client,
            client.stream(
                "GET", f"/jobs/{job['id']}/logs", params={"tail": 100_000, "follow": True}
            ) as response,
        ):
            followed.extend(response.iter_text())

    follower = threading.Thread(target=follow_log)
    follower.start()
    read = read_events(api_without_redis, job["id"])
    follower.join(120)

    assert read.steps() == list(range(1, 9))
    assert read.events[-1].event == "end" and read.events[-1].data["status"] == "succeeded"
    # The followed log is the whole log, and it ended when the job did.
    assert not follower.is_alive()
    assert "".join(followed) == (stack.home / "jobs" / job["id"] / "train.log").read_text()


def test_unknown_job_is_404_json(stack: Stack) -> None:
    missing = uuid.uuid4()
    for path in ("events", "metrics", "logs"):
        response = stack.http.get(f"/jobs/{missing}/{path}")
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
