"""The webhook contract: signatures (checked with the Standard Webhooks project's verifier),
the retry schedule, which URLs may receive webhooks, and the payload built from the
outbox's snapshot."""

from __future__ import annotations

import ipaddress
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from standardwebhooks import Webhook as Verifier

from api.webhook_sender import Outcome, attempt, job_as_read, render
from db.webhooks import Claimed
from traindepot import webhooks
from traindepot.settings import Settings
from traindepot.webhook_urls import UnsafeUrl, check_syntax, refusal, resolve

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    body = webhooks.body("job.succeeded", "2026-11-22T18:00:00+00:00", {"id": "x"})
    now = int(time.time())
    headers = webhooks.headers(secret, "msg_1", now, body)
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(now)
    assert Verifier(secret).verify(body, headers)["type"] == "job.succeeded"
    # Another secret, another body or another id: refused.
    for wrong_secret, wrong_body, wrong_id in (
        (webhooks.new_secret(), body, "msg_1"),
        (secret, body + b" ", "msg_1"),
        (secret, body, "msg_2"),
    ):
        tampered = {**headers, "webhook-id": wrong_id}
        with pytest.raises(Exception, match="signature"):
            Verifier(wrong_secret).verify(wrong_body, tampered)


def test_the_retry_delay_doubles_up_to_its_maximum_with_jitter() -> None:
    rng = random.Random(1)
    delays = [webhooks.retry_delay(n, initial=1, maximum=8, rng=rng) for n in range(1, 8)]
    bases = [1, 2, 4, 8, 8, 8, 8]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.7", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    assert refusal(ipaddress.ip_address(address), []) == f"not a public address ({kind})"


def test_public_and_allowed_addresses_are_accepted() -> None:
    assert refusal(ipaddress.ip_address("93.184.215.14"), []) is None
    assert refusal(ipaddress.ip_address("127.0.0.1"), LOOPBACK) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), LOOPBACK) is not None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("http:///path", "no host"),
        ("https://user:secret@example.com/", "credentials"),
        ("http://example.com:port/", "not a URL"),
        ("http://example.com/" + "x" * 2048, "longer than"),
    ],
)
def test_malformed_urls_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        check_syntax(url)


def test_resolve_pins_the_checked_address_and_keeps_the_host() -> None:
    target = resolve("http://127.0.0.1:8080/hook?x=1", LOOPBACK)
    assert (target.url, target.host, target.sni_hostname) == (
        "http://127.0.0.1:8080/hook?x=1",
        "127.0.0.1:8080",
        None,
    )
    named = resolve("https://localhost/hook", [*LOOPBACK, ipaddress.ip_network("::1/128")])
    assert named.host == "localhost" and named.sni_hostname == "localhost"
    assert named.url.endswith(":443/hook") and "localhost" not in named.url
    with pytest.raises(UnsafeUrl, match="loopback"):
        resolve("http://localhost/hook", [])


def test_the_payload_is_the_job_as_the_api_reads_it() -> None:
    job_id = uuid.uuid4()
    row = {
        "id": str(job_id),
        "name": "tiny",
        "tenant": "t",
        "submitted_by": None,
        "cancelled_by": None,
        "cancel_requested_at": None,
        "status": "succeeded",
        "spec": {"name": "tiny"},
        "queue": "default",
        "priority": 5,
        "attempt": 1,
        "max_restarts": 3,
        "created_at": "2026-11-22T18:00:00.123456+00:00",
        "updated_at": "2026-11-22T18:00:09+00:00",
        "enqueued_at": None,
        "started_at": "2026-11-22T18:00:01+00:00",
        "finished_at": "2026-11-22T18:00:09+00:00",
        "lease_owner": None,
        "lease_expires_at": None,
        "disk_bytes": 1234,
        "progress": None,
        "result": {"global_step": 6, "training_loss": 5.5, "metrics": {"train_loss": 5.5}},
        "error": None,
    }
    attempt = {
        "job_id": str(job_id),
        "attempt": 1,
        "worker": "h:1",
        "started_at": "2026-11-22T18:00:01+00:00",
        "ended_at": "2026-11-22T18:00:09+00:00",
        "outcome": "succeeded",
        "resumed_from_step": None,
    }
    data = job_as_read({"job": row, "attempts": [attempt]})
    assert data["id"] == str(job_id) and data["result"]["global_step"] == 6
    assert data["created_at"] == "2026-11-22T18:00:00.123456Z"
    assert data["attempts"][0]["outcome"] == "succeeded" and data["disk_bytes"] == 1234
    claimed = Claimed(
        id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        attempts=0,
        url="http://x/",
        secret=webhooks.new_secret(),
        event_type="job.succeeded",
        event_data={"job": row, "attempts": [attempt]},
        occurred_at=datetime(2026, 11, 22, 18, 0, 9, tzinfo=UTC),
    )
    sent = json.loads(render(claimed))
    assert sent == {"type": "job.succeeded", "timestamp": "2026-11-22T18:00:09+00:00", "data": data}


class _Answers(BaseHTTPRequestHandler):
    """Answers by path: /ok 204, /redirect 302 to /ok, /big 500 with a large body."""

    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("location", "/ok")
            self.send_header("content-length", "0")
            self.end_headers()
        elif self.path == "/big":
            self.send_response(500)
            self.send_header("content-length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * (1 << 20))
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def answers() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Answers.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _claimed(url: str, secret: str) -> Claimed:
    return Claimed(
        id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        attempts=0,
        url=url,
        secret=secret,
        event_type=webhooks.TEST_EVENT,
        event_data={"message": "hello"},
        occurred_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def test_an_attempt_is_signed_bounded_and_follows_no_redirect(answers: str) -> None:
    settings = Settings(webhook_allowed_networks=LOOPBACK, webhook_max_response_bytes=100)
    secret = webhooks.new_secret()
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=5) as client:
        ok = attempt(client, _claimed(f"{answers}/ok", secret), settings)
        assert ok == Outcome(True, 204, None)
        _, headers, body = _Answers.seen[-1]
        assert Verifier(secret).verify(body, headers)["data"] == {"message": "hello"}
        assert headers["host"] == answers.removeprefix("http://")

        moved = attempt(client, _claimed(f"{answers}/redirect", secret), settings)
        assert not moved.delivered and moved.status_code == 302
        assert "redirects are not followed" in (moved.error or "")
        assert [p for p, _, _ in _Answers.seen] == ["/ok", "/redirect"]  # /ok not asked again

        big = attempt(client, _claimed(f"{answers}/big", secret), settings)
        assert big.status_code == 500 and big.error == "HTTP 500: " + "x" * 100

        # The address is checked again before every attempt (DNS rebinding): refused, and
        # nothing is sent.
        # (No allowed network: explicitly, not from the environment, which a test stack in
        # this process may have set.)
        strict = Settings(webhook_allowed_networks=[])
        refused = attempt(client, _claimed(f"{answers}/ok", secret), strict)
        assert not refused.delivered and "loopback" in (refused.error or "")
        assert len(_Answers.seen) == 3
