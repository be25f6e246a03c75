"""The lease of a running attempt, renewed on its own thread.

A running attempt holds `jobs.lease_expires_at`; the reaper (worker/reaper.py) requeues a job
whose lease expired. Renewing on a thread of its own means a slow or hung database call never
delays the supervisor's other duties, and the supervisor can tell by the clock when the lease
may already have expired (docs/architecture.md, "Invariants").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from sqlalchemy.exc import DBAPIError, OperationalError

from db import attempts, gang_nodes
from db.models import JobStatus
from db.session import session_scope
from traindepot.settings import Settings

log = logging.getLogger(__name__)


class Lease:
    def __init__(
        self, *, job_id: uuid.UUID, attempt: int, settings: Settings, node: int | None = None
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        # A node of a job of several (db/gang_nodes.py): its seat is renewed with the job, and
        # the lease is lost for every node once one of them stops renewing.
        self.node = node
        self.settings = settings
        # Monotonic time taken *before* the last successful renewal was sent: the database
        # set `lease_expires_at = now() + lease_seconds` with a `now()` no earlier than this,
        # so the lease is certainly valid until `renewed_at + lease_seconds`.
        self.renewed_at = time.monotonic()
        self.status: JobStatus | None = JobStatus.RUNNING
        self.lost = threading.Event()  # the job was reaped or finished by someone else
        self._stop = threading.Event()
        self._now = threading.Event()  # renew now, not at the next heartbeat
        self._thread = threading.Thread(target=self._run, name="traindepot-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()
        self._thread.join()

    def renew_now(self) -> None:
        """Renew (and read the job's status) at once: the job changed under this attempt
        (worker/control.py), which the renewal finds lost if it is."""
        self._now.set()

    def seconds_since_renewal(self) -> float:
        return time.monotonic() - self.renewed_at

    def _run(self) -> None:
        while True:
            self._now.wait(self.settings.heartbeat_seconds)
            self._now.clear()
            if self._stop.is_set():
                return
            sent_at = time.monotonic()
            try:
                with session_scope() as session:
                    status = (
                        attempts.heartbeat(
                            session=session,
                            job_id=self.job_id,
                            attempt=self.attempt,
                            lease_seconds=self.settings.lease_seconds,
                        )
                        if self.node is None
                        else gang_nodes.heartbeat(
                            session=session,
                            job_id=self.job_id,
                            attempt=self.attempt,
                            node=self.node,
                            lease_seconds=self.settings.lease_seconds,
                        )
                    )
            except (OperationalError, DBAPIError) as exc:
                log.warning("job %s: heartbeat failed (%s)", self.job_id, exc)
                continue
            if status is None:
                self.lost.set()
                return
            self.status = status
            self.renewed_at = sent_at
