"""Issue 16: webhooks. Real receivers (HTTP servers in this process) hear every status change
of real jobs from the real sender process (`traindepot webhooks`), signed the Standard
Webhooks way: the signatures are checked with that project's own verifier, not ours."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from db import webhooks as outbox
from db.session import session_scope
from tests.integration.conftest import Stack
from tests.integration.test_status_events import _fake_lost_attempt
from tests.specs import tiny_spec
from traindepot.embedded import free_port

pytestmark = pytest.mark.integration

NOBODY = "nobody-listens"  # a configured queue no worker takes jobs from


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    """An HTTP server that records every POST and answers 200; `hang` makes it hold each
    request (no answer) until `release` is set."""

    def __init__(self, port: int = 0, *, hang: bool = False) -> None:
        self.received: list[Received] = []
        self.hang = hang
        self.release = threading.Event()
        self.holding = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                seen = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with lock:
                    receiver.received.append(seen)
                    receiver.holding += receiver.hang
                if receiver.hang:
                    receiver.release.wait(120)
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def of_job(self, job_id: str, path: str = "/hook") -> list[Received]:
        return [
            r for r in list(self.received) if r.path == path and r.event["data"].get("id") == job_id
        ]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def events_of(received: list[Received]) -> list[str]:
    return [r.event["type"] for r in received]


def deliveries_of(stack: Stack, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.http.get(f"/jobs/{job_id}/deliveries").json()
    return found


def assert_signed(received: list[Received], secret: str) -> None:
    verifier = Verifier(secret)
    for r in received:
        verifier.verify(r.body, r.headers)  # raises on a bad signature
    with pytest.raises(Exception, match="signature"):
        Verifier(secret).verify(received[0].body + b" ", received[0].headers)


def assert_once_in_order(
    http: httpx.Client, got: list[Received], events: list[str], secret: str
) -> None:
    assert events_of(got) == events  # once each, in order
    assert len({r.id for r in got}) == len(events)
    assert_signed(got, secret)
    job_id = got[0].event["data"]["id"]
    # The last event carries the job as GET /jobs/{id} shows it, TrainOutput or error ...
    assert got[-1].event["data"] == http.get(f"/jobs/{job_id}").json()
    # ... earlier ones the job as it was then, not as it is now.
    assert [r.event["data"]["status"] for r in got[:2]] == ["queued", "running"]
    assert got[0].event["data"]["result"] is None and got[0].event["data"]["attempts"] == []


def test_a_failed_and_a_cancelled_job_every_change_once_in_order_signed(
    ready: Stack, receiver: Receiver
) -> None:
    stack = ready
    key = stack.new_key("hooks-order")
    with httpx.Client(base_url=stack.url, timeout=60, headers=stack.headers(key)) as http:
        made = http.post("/webhooks", json={"url": receiver.url()})
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"].startswith("whsec_") and hook["job_id"] is None
        listed = http.get("/webhooks").json()
        assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]

        # A job's own subscription, for one event only, with a secret of its own.
        own = {"webhooks": [{"url": receiver.url("/own"), "events": ["job.failed"]}]}
        no_text = {"rows": [{"body": "hello"}] * 4}
        submitted = http.post(
            "/jobs", json=tiny_spec(name="hooked-fails", dataset=no_text, notify=own)
        )
        assert submitted.status_code == 201, submitted.text
        failed = submitted.json()
        own_secret = failed["webhooks"][0]["secret"]
        assert own_secret != hook["secret"]
        assert "webhooks" not in http.get(f"/jobs/{failed['id']}").json()
        # Claimed by a worker that died (the reaper requeues it), then cancelled.
        waiting = http.post("/jobs", json=tiny_spec(name="hooked-cancel", queue=NOBODY)).json()
        _fake_lost_attempt(stack, waiting["id"])
        # Reaped: the attempt ended (a read of the job alone may still be its submitted state).
        wait_for(
            "the reaper",
            lambda: (
                stack.attempts(waiting["id"])[0]["outcome"] == "lost"
                and stack.get(waiting["id"])["status"] == "queued"
            ),
        )
        assert http.post(f"/jobs/{waiting['id']}/cancel").json()["status"] == "cancelled"

        expected = {
            failed["id"]: ["job.queued", "job.running", "job.failed"],
            waiting["id"]: ["job.queued", "job.running", "job.requeued", "job.cancelled"],
        }

        def all_arrived() -> bool:
            return all(len(receiver.of_job(j)) >= len(e) for j, e in expected.items())

        wait_for("every job's events", all_arrived)
        wait_for("the job's own subscription", lambda: receiver.of_job(failed["id"], "/own"))
        time.sleep(1)  # anything sent twice would arrive by now
        for job_id, events in expected.items():
            assert_once_in_order(http, receiver.of_job(job_id), events, hook["secret"])
        own_got = receiver.of_job(failed["id"], "/own")
        assert events_of(own_got) == ["job.failed"]
        assert_signed(own_got, own_secret)
        error = own_got[0].event["data"]["error"]
        assert error["reason"] == "data" and error["type"] == "DataError"

        deliveries = http.get(f"/jobs/{failed['id']}/deliveries").json()
        assert [
            (d["event"], d["status"], d["attempts"], d["last_status_code"]) for d in deliveries
        ] == [
            ("job.queued", "delivered", 1, 200),
            ("job.running", "delivered", 1, 200),
            ("job.failed", "delivered", 1, 200),
            ("job.failed", "delivered", 1, 200),
        ]
        assert {d["url"] for d in deliveries} == {receiver.url(), receiver.url("/own")}
        assert all(d["next_attempt_at"] is None for d in deliveries)

        # A test event, and no more events once the subscription is gone.
        queued = http.post(f"/webhooks/{hook['id']}/test")
        assert queued.status_code == 202, queued.text
        test = wait_for(
            "the test event",
            lambda: [r for r in receiver.received if r.event["type"] == "webhook.test"],
        )
        assert test[0].id == f"msg_{queued.json()['id']}"
        assert_signed(test, hook["secret"])
        assert http.delete(f"/webhooks/{hook['id']}").status_code == 204
        assert http.get("/webhooks").json() == []
        assert http.post(f"/webhooks/{hook['id']}/test").status_code == 404
        # Another tenant's job and its deliveries do not exist for this tenant.
        nobody_home = {"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/"}]}
        other = stack.submit(tiny_spec(name="hooks-other", queue=NOBODY, notify=nobody_home))
        assert http.get(f"/jobs/{other['id']}/deliveries").status_code == 404
        stack.http.post(f"/jobs/{other['id']}/cancel")

    # The sender purges finished deliveries and their events after `webhook_keep_seconds`;
    # a pending one stays, however old.
    wait_for("a failed attempt", lambda: deliveries_of(stack, other["id"])[0]["attempts"])
    with session_scope(stack.database_url) as session:
        assert outbox.purge_finished(session=session, before=datetime.now(UTC)) >= 4
    assert deliveries_of(stack, failed["id"]) == []
    assert [d["status"] for d in deliveries_of(stack, other["id"])] == ["pending", "pending"]


def test_private_and_malformed_urls_are_refused(stack: Stack) -> None:
    for url, loc in (
        ("http://10.1.2.3/hook", "url"),  # private
        ("http://169.254.169.254/latest/meta-data", "url"),  # link-local (cloud metadata)
        ("http://[::1]:8080/hook", "url"),  # loopback, IPv6 (the tests allow 127.0.0.0/8 only)
        ("ftp://example.com/hook", "url"),
        ("http://user:pw@127.0.0.1/hook", "url"),
    ):
        refused = stack.http.post("/webhooks", json={"url": url})
        assert refused.status_code == 422, (url, refused.text)
        [problem] = refused.json()["detail"]
        assert problem["loc"][-1] == loc and problem["msg"], problem
        notify = {"webhooks": [{"url": url}]}
        refused = stack.http.post("/jobs", json=tiny_spec(name="private-hook", notify=notify))
        assert refused.status_code == 422, (url, refused.text)
        assert [p["loc"][:3] for p in refused.json()["detail"]] == [["notify", "webhooks", 0]]
    unknown = stack.http.post("/webhooks", json={"url": "http://x/", "events": ["job.exploded"]})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"][0] == "events"


def test_a_job_that_succeeds_reaches_a_receiver_down_30s_and_a_hanging_one_slows_nothing(
    ready: Stack, receiver: Receiver
) -> None:
    stack = ready
    down_port = free_port()  # nothing listens there yet: connections are refused
    hanging = Receiver(hang=True)
    try:
        notify = {
            "webhooks": [
                {"url": f"http://127.0.0.1:{down_port}/hook"},
                {"url": hanging.url()},
                {"url": receiver.url()},
            ]
        }
        job = stack.submit(tiny_spec(name="hooks-down-and-hanging", notify=notify))
        went_down = time.monotonic()
        secrets = [h["secret"] for h in job["webhooks"]]
        expected = ["job.queued", "job.running", "job.succeeded"]
        # The hanging receiver holds its first request (and every retry of it) ...
        wait_for("the hanging receiver's first request", lambda: hanging.holding)
        # ... while the job trains to its end and the healthy receiver hears all of it.
        done = stack.wait(job["id"])
        assert done["status"] == "succeeded", done["error"]
        wait_for(
            "every event at the healthy receiver", lambda: len(receiver.of_job(job["id"])) >= 3
        )
        time.sleep(1)  # anything sent twice would arrive by now
        assert_once_in_order(stack.http, receiver.of_job(job["id"]), expected, secrets[2])
        assert receiver.of_job(job["id"])[-1].event["data"]["result"]["global_step"] == 6
        assert events_of(hanging.of_job(job["id"]))[:1] == ["job.queued"]
        assert set(events_of(hanging.of_job(job["id"]))) == {"job.queued"}  # in order: held back

        def by_url(url: str) -> list[dict[str, Any]]:
            return [d for d in deliveries_of(stack, job["id"]) if d["url"] == url]

        down_url = notify["webhooks"][0]["url"]
        retried = wait_for(
            "retries to the receiver that is down",
            lambda: [d for d in by_url(down_url) if d["attempts"] >= 2],
        )
        assert retried[0]["status"] == "pending" and retried[0]["next_attempt_at"] is not None
        assert "ConnectError" in retried[0]["last_error"]
        hung = wait_for(
            "a timed-out attempt", lambda: [d for d in by_url(hanging.url()) if d["attempts"] >= 1]
        )
        assert "Timeout" in hung[0]["last_error"]

        time.sleep(max(0.0, 30 - (time.monotonic() - went_down)))
        back = Receiver(down_port)
        try:
            wait_for(
                "everything at the receiver that came back",
                lambda: len(back.of_job(job["id"])) >= 3,
            )
            time.sleep(1)
            assert_once_in_order(stack.http, back.of_job(job["id"]), expected, secrets[0])
        finally:
            back.close()
        hanging.hang = False
        hanging.release.set()
        wait_for(
            "the hanging receiver, answering again",
            lambda: len({r.id for r in hanging.of_job(job["id"])}) >= 3,
        )
        firsts = list(dict.fromkeys((r.id, r.event["type"]) for r in hanging.of_job(job["id"])))
        assert [t for _, t in firsts] == expected
    finally:
        hanging.close()


def test_sender_and_worker_killed_between_the_change_and_the_delivery(
    ready: Stack, receiver: Receiver
) -> None:
    stack = ready
    [sender] = [s for s in stack.senders if s.poll() is None]
    sender.send_signal(signal.SIGKILL)
    sender.wait(30)
    try:
        notify = {"webhooks": [{"url": receiver.url()}]}
        job = stack.submit(tiny_spec(name="hooks-killed", notify=notify))
        wait_for("the job to run", lambda: stack.get(job["id"])["status"] == "running")
        [worker] = [w for w in stack.workers if w.poll() is None]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        # Its lease runs out; the next worker's reaper ends it (cancelling -> cancelled).
        assert stack.http.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
        stack.start_worker("after-hooks-kill")

        # A sender takes the first event and is killed while the receiver holds the request.
        assert receiver.received == []  # nothing sent so far: no sender ran
        receiver.hang = True
        second = stack.start_sender()
        wait_for("the first delivery attempt", lambda: receiver.holding)
        second.send_signal(signal.SIGKILL)
        second.wait(30)
        receiver.hang = False
        receiver.release.set()
    finally:
        stack.start_sender()
    assert stack.wait(job["id"])["status"] == "cancelled"
    expected = ["job.queued", "job.running", "job.cancelled"]
    wait_for("every event", lambda: len({r.id for r in receiver.of_job(job["id"])}) >= 3)
    time.sleep(1)
    got = receiver.of_job(job["id"])
    # At least once: the interrupted delivery comes again with the same webhook-id, and the
    # receiver can drop the duplicate; then every event, in order.
    assert got[0].id == got[1].id and len(got) == 4
    assert events_of(got[1:]) == expected
    assert [r.event["data"]["status"] for r in got[1:]] == ["queued", "running", "cancelled"]
    deliveries = deliveries_of(stack, job["id"])
    assert [d["status"] for d in deliveries] == ["delivered"] * 3
    assert deliveries[0]["attempts"] == 1  # the killed sender recorded nothing
