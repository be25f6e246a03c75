"""What a worker must act on at once, told by PostgreSQL as it commits: a cancel, a job
reaped or taken over by another attempt (migration 0011's trigger NOTIFYs
`traindepot_workers` with `<job id> <status> <attempt>`).

One listener per worker process: a thread with a connection of its own that LISTENs and
hands each notice to the supervisor watching that job (worker/supervisor.py), which stops
its training child within milliseconds of the commit instead of at its next lease renewal
(docs/benchmarks.md, "Cancel"). Notices are a fast path only: the lease renewal
(worker/lease.py) still reads the job's status every `heartbeat_seconds`, so a notice lost
while the connection was down costs latency, never a cancel. While the connection is
down the thread reconnects every second; after it reconnects, every watcher is told to
renew its lease (a change may have been missed in between).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from db.session import libpq_url
from traindepot.settings import Settings

log = logging.getLogger(__name__)
CHANNEL = "traindepot_workers"
LISTENER = "traindepot-worker-control"  # its application_name in pg_stat_activity
# How often the thread looks up from an idle connection (to see it fail, and to stop).
POLL_SECONDS = 5.0

# Called with the job's status and attempt after the change, or (None, None) when a
# change may have been missed (the connection was lost): renew and find out.
OnChange = Callable[[str | None, int | None], None]


class Control:
    def __init__(self, database_url: str) -> None:
        self._url = libpq_url(database_url)
        self._watchers: dict[uuid.UUID, OnChange] = {}
        self._lock = threading.Lock()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traindepot-control", daemon=True)
        self._thread.start()

    def watch(self, job_id: uuid.UUID, on_change: OnChange, *, wait: float = 2.0) -> None:
        """Tell `on_change` of the job's changes until `forget`; waits up to `wait` seconds
        for the listener to be up (a worker's first job)."""
        with self._lock:
            self._watchers[job_id] = on_change
        self.listening.wait(wait)

    def forget(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._watchers.pop(job_id, None)

    def _tell(self, job_id: uuid.UUID, status: str | None, attempt: int | None) -> None:
        with self._lock:
            on_change = self._watchers.get(job_id)
        if on_change is not None:
            try:
                on_change(status, attempt)
            except Exception:  # a watcher's bug must not end the listener for every job
                log.exception("control: handling a notice for job %s", job_id)

    def _tell_everyone(self) -> None:
        with self._lock:
            watched = list(self._watchers)
        for job_id in watched:
            self._tell(job_id, None, None)

    def _run(self) -> None:
        reconnected = False
        while True:
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=5, application_name=LISTENER
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if reconnected:
                        self._tell_everyone()
                    self._listen(conn)
            except (psycopg.Error, OSError) as exc:
                log.info("control: notices unavailable (%s); leases still renew", exc)
            self.listening.clear()
            reconnected = True
            time.sleep(1.0)

    def _listen(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        while True:
            for notice in conn.notifies(timeout=POLL_SECONDS):
                self._dispatch(notice.payload)
            conn.execute("SELECT 1")  # a silent network drops no connection: ask

    def _dispatch(self, payload: str) -> None:
        try:
            job, status, attempt = payload.split(" ")
            job_id, number = uuid.UUID(job), int(attempt)
        except ValueError:
            log.warning("control: a notice that names no job: %r", payload)
            return
        self._tell(job_id, status, number)


_control: Control | None = None
_control_lock = threading.Lock()


def control(settings: Settings) -> Control:
    """This process' listener, started at its first use."""
    global _control
    with _control_lock:
        if _control is None:
            _control = Control(settings.require_database_url())
        return _control
