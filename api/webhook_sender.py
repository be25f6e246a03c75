"""The webhook sender, `traindepot webhooks`: a process of its own that works through the
outbox (docs/architecture.md, "Webhooks").

It takes due deliveries (`db.webhooks.claim_due`: FOR UPDATE SKIP LOCKED, in order per job
and subscription), makes each attempt on a thread of its own (`webhook_concurrency` at
once), and records the result: delivered, due again after a backoff, or failed once the
retry window is over. It wakes up when an event is committed (LISTEN on the trigger's
channel) and polls besides, so a lost notification costs latency, never an event. Any
number of senders may run; a sender killed mid-attempt leaves its deliveries to be taken
again when their lease ends: at-least-once, with the same `webhook-id`.

A receiver that hangs holds one thread for at most its timeouts; the API and the workers
never wait on a receiver, they only commit rows.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from api.schemas import JobOut
from db import webhooks
from db.models import Job, JobAttempt
from db.session import session_scope, sqlalchemy_url
from traindepot import __version__, webhook_urls
from traindepot import webhooks as contract
from traindepot.settings import Settings, get_settings

log = logging.getLogger(__name__)
PURGE_EVERY_SECONDS = 3600.0


def job_as_read(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The job as `GET /jobs/{id}` returns it, from the outbox's snapshot of its row and
    its attempts (taken by the trigger when the event happened)."""
    row = snapshot["job"]
    job = Job(**{column.key: row.get(column.name) for column in Job.__table__.columns})
    taken = snapshot.get("attempts", [])
    attempts = [
        JobAttempt(**{column.key: a.get(column.name) for column in JobAttempt.__table__.columns})
        for a in taken
    ]
    # Each attempt's nodes (a job of several nodes; snapshots before migration 0015 have none).
    nodes = {int(a["attempt"]): list(a.get("nodes") or []) for a in taken}
    return JobOut.of(job, attempts=attempts, nodes=nodes).model_dump(mode="json")


def render(claimed: webhooks.Claimed) -> bytes:
    data = claimed.event_data
    if claimed.event_type != contract.TEST_EVENT and claimed.event_type.startswith("job."):
        data = job_as_read(data)
    return contract.body(claimed.event_type, claimed.occurred_at.isoformat(), data)


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None
    error: str | None


def attempt(client: httpx.Client, claimed: webhooks.Claimed, settings: Settings) -> Outcome:
    """One signed POST to the subscription's URL, connected to the address just checked."""
    try:
        target = webhook_urls.resolve(claimed.url, settings.webhook_allowed_networks)
    except webhook_urls.UnsafeUrl as exc:
        return Outcome(False, None, f"refused: {exc}")
    payload = render(claimed)
    headers = contract.headers(
        claimed.secret, contract.message_id(claimed.id), int(time.time()), payload
    )
    headers["host"] = target.host
    headers["user-agent"] = f"traindepot-webhooks/{__version__}"
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
    # httpx's timeout bounds each step (connect, send, each read); this bounds the whole
    # answer, so a receiver that trickles bytes cannot hold a thread either.
    deadline = time.monotonic() + 2 * settings.webhook_timeout_seconds
    head = b""
    try:
        with client.stream(
            "POST", target.url, content=payload, headers=headers, extensions=extensions
        ) as response:
            code = response.status_code
            location = response.headers.get("location")
            try:
                for chunk in response.iter_raw():
                    head += chunk[: max(0, settings.webhook_max_response_bytes - len(head))]
                    if len(head) >= settings.webhook_max_response_bytes:
                        break
                    if time.monotonic() > deadline:
                        break
            except httpx.HTTPError:
                pass  # the status is the answer; the body is only kept for `last_error`
    except httpx.HTTPError as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
    if 200 <= code < 300:
        return Outcome(True, code, None)
    if 300 <= code < 400:
        return Outcome(False, code, f"HTTP {code}: redirects are not followed ({location})")
    answer = head[:200].decode("utf-8", "replace").strip()
    return Outcome(False, code, f"HTTP {code}" + (f": {answer}" if answer else ""))


class Sender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.database_url = settings.require_database_url()
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[uuid.UUID, int] = {}  # subscription -> attempts in flight

    def deliver(self, client: httpx.Client, claimed: webhooks.Claimed) -> None:
        outcome = attempt(client, claimed, self.settings)
        if not outcome.delivered:
            log.info("delivery %s: %s", claimed.id, outcome.error)
        delay = contract.retry_delay(
            claimed.attempts + 1,
            initial=self.settings.webhook_backoff_seconds,
            maximum=self.settings.webhook_backoff_max_seconds,
        )
        # A failure to record (the database is down) leaves the delivery to be taken
        # again when its lease ends: sent twice, never lost.
        with session_scope(self.database_url) as session:
            webhooks.record_attempt(
                session=session,
                claimed=claimed,
                status_code=outcome.status_code,
                error=outcome.error,
                delivered=outcome.delivered,
                delay_seconds=delay,
                window_seconds=self.settings.webhook_retry_seconds,
            )

    def _done(self, webhook_id: uuid.UUID, future: Future[None]) -> None:
        if future.exception() is not None:
            log.error("a delivery attempt failed", exc_info=future.exception())
        with self._lock:
            self._in_flight[webhook_id] -= 1
            if not self._in_flight[webhook_id]:
                del self._in_flight[webhook_id]
        self._wake.set()  # its job's next event may be due now

    def _claim(self, limit: int) -> list[webhooks.Claimed]:
        with self._lock:
            busy = list(self._in_flight)
        try:
            with session_scope(self.database_url) as session:
                return webhooks.claim_due(
                    session=session,
                    limit=limit,
                    lease_seconds=self.settings.webhook_lease_seconds,
                    busy=busy,
                )
        except SQLAlchemyError as exc:
            log.warning("cannot read the outbox: %s", exc)
            return []

    def _purge(self) -> None:
        keep = timedelta(seconds=self.settings.webhook_keep_seconds)
        try:
            with session_scope(self.database_url) as session:
                gone = webhooks.purge_finished(session=session, before=datetime.now(UTC) - keep)
        except SQLAlchemyError as exc:
            log.warning("cannot purge old deliveries: %s", exc)
            return
        if gone:
            log.info("purged %d events older than %s", gone, keep)

    def _listen(self) -> None:
        """Wake the loop whenever the trigger (or a test event) notifies its channel."""
        url = make_url(sqlalchemy_url(self.database_url)).set(drivername="postgresql")
        while not self.stop.is_set():
            try:
                with psycopg.connect(
                    url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
                ) as conn:
                    conn.execute(f"LISTEN {webhooks.CHANNEL}")
                    self._wake.set()  # events committed while not listening
                    while not self.stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake.set()
            except psycopg.Error as exc:
                log.warning("not listening for new events: %s", exc)
                self.stop.wait(1.0)

    def run(self) -> None:
        """Deliver until `stop` is set, then finish the attempts in flight."""
        concurrency = self.settings.webhook_concurrency
        threading.Thread(target=self._listen, name="webhooks-listen", daemon=True).start()
        with (
            httpx.Client(
                timeout=self.settings.webhook_timeout_seconds,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=concurrency),
            ) as client,
            ThreadPoolExecutor(concurrency, thread_name_prefix="webhooks") as pool,
        ):
            next_purge = time.monotonic()
            while not self.stop.is_set():
                if time.monotonic() >= next_purge:
                    self._purge()
                    next_purge = time.monotonic() + PURGE_EVERY_SECONDS
                self._wake.clear()
                with self._lock:
                    free = concurrency - sum(self._in_flight.values())
                claimed = self._claim(free) if free > 0 else []
                for item in claimed:
                    with self._lock:
                        self._in_flight[item.webhook_id] = (
                            self._in_flight.get(item.webhook_id, 0) + 1
                        )
                    done = functools.partial(self._done, item.webhook_id)
                    pool.submit(self.deliver, client, item).add_done_callback(done)
                if claimed and len(claimed) == free:
                    continue
                self._wake.wait(self.settings.webhook_poll_seconds)
        self.stop.set()


def command() -> None:
    """Deliver webhooks: work through the outbox until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    if not settings.database_url:
        print("TRAINDEPOT_DATABASE_URL is not set: the sender reads the outbox", file=sys.stderr)
        raise SystemExit(2)
    sender = Sender(settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: sender.stop.set())
    log.info("delivering webhooks (%d at once)", settings.webhook_concurrency)
    sender.run()
