"""The documents `GET /jobs/{id}` answers with: from this process' cache when it holds the
job, else read from PostgreSQL (db/job_json.py, api/aio_db.py) and kept.

A job is polled by every client that waits for it (CLIs, CI systems, dashboards), and
between two of its changes every poll would read the same row. The cache keeps each
document until PostgreSQL announces that its job changed: migration 0010's triggers NOTIFY
`traindepot_jobs` at the commit of every change of a job's row or of its attempts, and
`follow_changes` (the app's lifespan) LISTENs on a connection of its own and drops what
changed. A notice that names a queue drops every queued job of that queue too: their
`queue_position` may have moved.

It is trusted only while that connection is known to be up (the same rule as the key
cache, api/keycache.py): until `LISTEN` is confirmed, and from the moment the connection
fails, its termination is seen or a ping on it goes unanswered for `PING_SECONDS`, the cache
is emptied and bypassed, and every read goes to the database. A read that overlapped a
change of its job (or of its queue, for a queued job), or a clear, is never kept: `put`
takes the `epoch` read before the database call and looks through the notices since
(the last `RECENT_NOTICES`; past those it keeps nothing). A commit by this process also
empties it, so a client reads its own writes through the process that made them; through
another process, a change is seen once that process has the notice (milliseconds).
It holds at most `api_job_cache_mib` of bodies (least recently read out first), and not
a body over an eighth of that (a spec with megabytes of inline rows is read each time);
0 turns it off (e.g. behind a connection pooler that does not forward LISTEN).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass

import anyio
import asyncpg
from fastapi import Response

from api import aio_db, database
from api.errors import NotFound
from api.schemas import JobOut
from api.telemetry import JOB_READS
from db.job_json import JOB_JSON, job_json_args
from db.models import JobStatus
from db.session import libpq_url

log = logging.getLogger(__name__)
CHANNEL = "traindepot_jobs"
PING_SECONDS = 5.0
LISTENER = "traindepot-job-changes"  # its application_name in pg_stat_activity
RECENT_NOTICES = 1024


@dataclass(frozen=True)
class JobDoc:
    tenant: str
    queue: str | None  # its queue while it is queued (its position moves with the queue)
    body: bytes  # the JobOut JSON


class JobCache:
    def __init__(self) -> None:
        self._docs: OrderedDict[uuid.UUID, JobDoc] = OrderedDict()
        self._queued: dict[str, set[uuid.UUID]] = {}
        self.budget = 0  # bytes of bodies at most
        self._bytes = 0
        self.live = False  # LISTENing: every change reaches this process
        self.epoch = 0  # advanced by every notice and every clear
        self._cleared = 0  # the epoch of the last clear (a commit here, going live or dark)
        # The latest notices, (epoch, job, queue): what changed while a read was under way.
        self._recent: deque[tuple[int, uuid.UUID, str]] = deque(maxlen=RECENT_NOTICES)

    def get(self, job_id: uuid.UUID) -> JobDoc | None:
        doc = self._docs.get(job_id) if self.live else None
        if doc is not None:
            self._docs.move_to_end(job_id)
        return doc

    def put(self, job_id: uuid.UUID, doc: JobDoc, epoch: int) -> None:
        """Keep `doc`, read from the database after `epoch` was taken, unless its job (or,
        for a queued job, its queue) changed since then, or that cannot be told, or the
        cache is not trusted."""
        if not self.live or len(doc.body) > self.budget // 8:
            return
        if self._changed_since(epoch, job_id, doc.queue):
            return
        self._drop(job_id)
        self._docs[job_id] = doc
        self._bytes += len(doc.body)
        if doc.queue is not None:
            self._queued.setdefault(doc.queue, set()).add(job_id)
        while self._bytes > self.budget:
            self._drop(next(iter(self._docs)))

    def _drop(self, job_id: uuid.UUID) -> None:
        doc = self._docs.pop(job_id, None)
        if doc is not None:
            self._bytes -= len(doc.body)
            if doc.queue is not None:
                self._queued.get(doc.queue, set()).discard(job_id)

    def _changed_since(self, epoch: int, job_id: uuid.UUID, queue: str | None) -> bool:
        if self._cleared > epoch:
            return True
        if self.epoch - epoch > len(self._recent):  # more notices than are remembered
            return True
        for at, changed, changed_queue in reversed(self._recent):
            if at <= epoch:
                return False
            if changed == job_id or (queue is not None and changed_queue == queue):
                return True
        return False

    def changed(self, notice: str) -> None:
        """A notice from the channel: `<job id>` or `<job id> <queue>`."""
        text, _, queue = notice.partition(" ")
        try:
            job_id = uuid.UUID(text)
        except ValueError:
            log.warning("job cache: a notice that names no job: %r", notice)
            self.clear()
            return
        self.epoch += 1
        self._recent.append((self.epoch, job_id, queue))
        self._drop(job_id)
        if queue:
            for queued in list(self._queued.pop(queue, ())):
                self._drop(queued)

    def clear(self) -> None:
        self.epoch += 1
        self._cleared = self.epoch
        self._docs.clear()
        self._queued.clear()
        self._bytes = 0

    def go_live(self) -> None:
        self.clear()
        self.live = True

    def go_dark(self) -> None:
        self.live = False
        self.clear()


cache = JobCache()
FROM_CACHE = JOB_READS.labels("cache")
FROM_DATABASE = JOB_READS.labels("database")
# What this process commits, it reads back at once (the notice comes a moment later).
database.after_commit.append(cache.clear)


async def read(job_id: uuid.UUID, *, counted: bool = True) -> JobDoc | None:
    """The job's document: cached, or one statement (None: no such job). `counted`: the
    read is one of the API's answers in `traindepot_job_reads_total` (the start-up's
    warm-up read is not)."""
    doc = cache.get(job_id)
    if doc is not None:
        FROM_CACHE.inc()
        return doc
    if counted:
        FROM_DATABASE.inc()
    epoch = cache.epoch
    row = await aio_db.fetch_row(JOB_JSON, job_json_args(job_id))
    if row is None:
        return None
    doc = JobDoc(
        tenant=row["tenant"],
        queue=row["queue"] if row["status"] == JobStatus.QUEUED else None,
        body=JobOut.model_validate_json(row["job"]).model_dump_json().encode(),
    )
    cache.put(job_id, doc, epoch)
    return doc


async def document(job_id: uuid.UUID) -> bytes:
    """What a route that returns a job it just changed (submit, cancel, retry, PATCH,
    clone) answers with: the document `GET /jobs/{id}` answers with, read after the
    change's commit (which emptied this process' cache), attempts and queue position
    included."""
    doc = await read(job_id)
    if doc is None:  # deleted since the commit
        raise NotFound(f"job {job_id}")
    return doc.body


async def answer(job_id: uuid.UUID) -> Response:
    """`document` as the response."""
    return Response(await document(job_id), media_type="application/json")


_DOWN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def _listen(connection: asyncpg.Connection) -> None:
    """Trust the cache from LISTEN's confirmation on `connection` until that connection
    fails."""
    lost = asyncio.Event()

    def on_notice(_c: object, _pid: int, _channel: str, notice: object) -> None:
        cache.changed(str(notice))

    try:
        connection.add_termination_listener(lambda _c: lost.set())
        await connection.add_listener(CHANNEL, on_notice)
        cache.go_live()
        while not lost.is_set():
            with anyio.move_on_after(PING_SECONDS):
                await lost.wait()
            if not lost.is_set():  # a silent network drops no connection: ask
                with anyio.fail_after(PING_SECONDS):
                    await connection.fetchval("SELECT 1")
    finally:
        cache.go_dark()
        connection.terminate()


async def follow_changes(database_url: str, mib: int) -> None:
    """Run for the app's lifetime: keep a LISTEN connection up, drop what changes."""
    cache.budget = mib * 1024 * 1024
    if cache.budget <= 0:
        return
    while True:
        try:
            connection = await asyncpg.connect(
                libpq_url(database_url), timeout=5, server_settings={"application_name": LISTENER}
            )
        except _DOWN as exc:
            log.info("job changes unavailable (%s): every GET /jobs/{id} reads the database", exc)
            await anyio.sleep(1.0)
            continue
        try:
            await _listen(connection)
        except _DOWN as exc:
            log.info("job changes lost (%s): every GET /jobs/{id} reads the database", exc)
        # A connection this process had is gone: PostgreSQL may have restarted, and with it
        # every pooled one (renewed once per loss, not at each failed attempt to reconnect).
        await aio_db.forget_connections()
        await anyio.sleep(1.0)
