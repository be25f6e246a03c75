"""The flusher against the real Postgres and Redis of the stack: a burst far past its bound
loses no point, coalesces what it may coalesce, and survives the database going away."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from db import attempts, jobs
from db.models import JobStatus
from db.session import get_engine, session_scope
from tests.integration.conftest import Stack
from tests.integration.test_foundation import Subscriber
from worker.flusher import Flusher

pytestmark = pytest.mark.integration


@pytest.fixture
def running_job(stack: Stack) -> Iterator[uuid.UUID]:
    """A job row claimed by attempt 1 of a pretend worker (on a queue nobody serves),
    finished at the end so that no test leaves it running."""
    with session_scope() as session:
        job = jobs.create(session=session, spec={"name": "flusher", "queue": "nobody-listens"})
        job_id = job.id
    with session_scope() as session:
        assert (
            attempts.claim(session=session, job_id=job_id, worker="test", lease_seconds=3600) == 1
        )
    try:
        yield job_id
    finally:
        with session_scope() as session:
            attempts.finish(
                session=session, job_id=job_id, attempt=1, status=JobStatus.SUCCEEDED, result={}
            )


def test_burst_past_the_bound_loses_no_point(stack: Stack, running_job: uuid.UUID) -> None:
    subscriber = Subscriber(stack.redis_url, str(running_job))
    # A long interval: only the high-water mark and close() make it write.
    flusher = Flusher(
        job_id=running_job,
        attempt=1,
        redis_url=stack.redis_url,
        interval=60,
        high_water=100,
        max_batch=500,
        live_limit=50,
    )
    n = 20_000
    for step in range(1, n + 1):
        flusher.add_point(step=step, kind="train", epoch=step / n, values={"loss": 1 / step})
        flusher.set_progress({"global_step": step, "max_steps": n, "loss": 1 / step})
    flusher.add_point(step=n, kind="eval", epoch=1.0, values={"eval_loss": float("nan")})
    assert flusher.close(timeout=120)

    # Every point stored exactly once; the progress snapshot is the last one.
    rows = stack.sql(
        "SELECT step, kind, values FROM job_metrics WHERE job_id = %s ORDER BY id", running_job
    )
    assert [step for step, kind, _ in rows if kind == "train"] == list(range(1, n + 1))
    assert rows[-1] == (n, "eval", {"eval_loss": None})  # NaN has no JSON: null
    assert rows[0][2] == {"loss": 1.0}
    progress = stack.sql("SELECT progress FROM jobs WHERE id = %s", running_job)[0][0]
    assert progress["global_step"] == n and progress["loss"] == 1 / n
    assert progress["updated_at"]
    assert flusher.stored_points == n + 1

    # Live publishes were coalesced (batches of up to 500 > live_limit 50); each published
    # point names its predecessor only when it really is the previous one stored.
    messages = subscriber.close()
    published = [m for m in messages if m["type"] in ("train", "eval")]
    assert flusher.live.coalesced_publishes > 0
    assert len(published) == flusher.live.published_points < n + 1
    assert published[-1]["type"] == "eval"
    ids = [m["id"] for m in published]
    assert ids == sorted(ids)
    stored_ids = [
        i for (i,) in stack.sql("SELECT id FROM job_metrics WHERE job_id = %s", running_job)
    ]
    previous = {b: a for a, b in zip(sorted(stored_ids), sorted(stored_ids)[1:], strict=False)}
    for message in published:
        assert message["prev"] is None or message["prev"] == previous[message["id"]]


class TcpProxy:
    """A TCP forwarder to Postgres that the test can take down and bring back: a real
    network outage, seen by the flusher as a refused / dropped connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would not.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def test_database_outage_loses_nothing(stack: Stack, running_job: uuid.UUID) -> None:
    url = urlsplit(stack.database_url)
    proxy = TcpProxy((url.hostname or "127.0.0.1", url.port or 5432))
    proxied = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{proxy.port}"))
    proxy.up()
    flusher = Flusher(
        job_id=running_job,
        attempt=1,
        redis_url=stack.redis_url,
        interval=0.1,
        database_url=proxied,
    )
    try:
        for step in range(1, 101):
            flusher.add_point(step=step, kind="train", epoch=None, values={"loss": float(step)})
        wait_for(lambda: flusher.pending == 0)
        proxy.down()  # the database is gone: points pile up in the buffer, training goes on
        for step in range(101, 301):
            flusher.add_point(step=step, kind="train", epoch=None, values={"loss": float(step)})
            flusher.set_progress({"global_step": step})
        wait_for(lambda: flusher.failed_flushes >= 2)
        assert flusher.stored_points == 100 and flusher.pending == 200
        proxy.up()
        assert flusher.close(timeout=120)
    finally:
        proxy.down()
        get_engine(proxied).dispose()
    steps = stack.sql("SELECT step FROM job_metrics WHERE job_id = %s ORDER BY step", running_job)
    assert [s for (s,) in steps] == list(range(1, 301))
    [(progress,)] = stack.sql("SELECT progress FROM jobs WHERE id = %s", running_job)
    assert progress["global_step"] == 300


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def test_flush_sync_stores_every_point_before_a_checkpoint(
    stack: Stack, running_job: uuid.UUID
) -> None:
    """The callback calls flush_sync on a step that saves: the points up to it must be in
    the database before the checkpoint exists, whatever the flush interval."""
    flusher = Flusher(job_id=running_job, attempt=1, redis_url=stack.redis_url, interval=3600)
    for step in range(1, 26):
        flusher.add_point(step=step, kind="train", epoch=None, values={"loss": 1.0 / step})
    assert flusher.flush_sync(timeout=30)
    stored = stack.sql(
        "SELECT step FROM job_metrics WHERE job_id = %s AND kind = 'train' ORDER BY step",
        running_job,
    )
    assert [step for (step,) in stored] == list(range(1, 26))
    assert flusher.close(timeout=30)


def test_a_point_after_an_idle_interval_is_written_at_once_a_stream_in_batches(
    stack: Stack, running_job: uuid.UUID
) -> None:
    """Issue 22: the first point (nothing written for an interval) is written and published
    at once, not an interval later; the points right after it wait for the interval."""
    subscriber = Subscriber(stack.redis_url, str(running_job))
    flusher = Flusher(job_id=running_job, attempt=1, redis_url=stack.redis_url, interval=3600)

    def stored() -> list[int]:
        rows = stack.sql(
            "SELECT step FROM job_metrics WHERE job_id = %s ORDER BY step", running_job
        )
        return [step for (step,) in rows]

    flusher.add_point(step=1, kind="train", epoch=None, values={"loss": 1.0})
    wait_for(lambda: stored() == [1], timeout=30)
    wait_for(lambda: [p["step"] for p in subscriber.messages] == [1], timeout=30)
    for step in range(2, 7):  # a stream: within the interval of the write just made
        flusher.add_point(step=step, kind="train", epoch=None, values={"loss": 1.0 / step})
    time.sleep(1.0)
    assert stored() == [1] and flusher.pending == 5  # batched: held for the interval
    assert flusher.close(timeout=30)
    assert stored() == list(range(1, 7))
    subscriber.close()
