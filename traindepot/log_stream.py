"""A job's training log beyond the worker's disk, when there is an artifact store
(docs/architecture.md, "The artifact store"): Redis while the job runs, the store once it
has ended.

- **Live: a Redis stream** `traindepot:log:{job id}`. The supervisor reads what its training
  child appends to the local `train.log` every `POLL_SECONDS` and adds it as one entry
  (`LogPublisher`); every attempt of the job, on whatever worker, appends to the same
  stream, so `GET /jobs/{id}/logs?follow=true` on any API process reads the log as it
  grows, from any worker. The stream keeps at most `log_stream_max_chunks` entries.
- **Kept: `train.log` in the store**, written when an attempt ends (`whole_log`: the stream
  from its first entry, every attempt's part, lost ones included; the local file when the
  stream has lost its start). The stream then expires.

Redis is the live path because the store has no append: a growing object would be
rewritten whole at each poll. The store is the record because Redis holds memory, not
files, and an ended job's log is read rarely.
"""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import redis

from traindepot import logtail
from traindepot.redis_client import client

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
ENDED_TTL_SECONDS = 3600  # after the end, readers have the store's copy
_PAGE = 100


def key(job_id: object) -> str:
    return f"traindepot:log:{job_id}"


def _first_key(job_id: object) -> str:
    return f"{key(job_id)}:first"


class LogPublisher:
    """The supervisor's thread: the local log's new bytes, from `offset`, to the stream."""

    def __init__(
        self, redis_url: str, job_id: object, path: Path, *, offset: int, max_chunks: int
    ) -> None:
        self.redis = client(redis_url)
        self.job_id = job_id
        self.path = path
        self.offset = offset
        self.max_chunks = max_chunks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{job_id}", daemon=True)

    def start(self) -> LogPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Publish what is left, then stop."""
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self.publish_new()
            if stopping:
                return
            self._stop.wait(POLL_SECONDS)

    def publish_new(self) -> None:
        while True:
            data, offset = logtail.read_from(self.path, self.offset)
            if not data:
                return
            try:
                entry = self.redis.xadd(
                    key(self.job_id), {"d": data}, maxlen=self.max_chunks, approximate=True
                )
                self.redis.set(_first_key(self.job_id), entry, nx=True)
            except redis.RedisError as exc:  # try again at the next poll, from the same offset
                log.warning("job %s: log not published (%s)", self.job_id, exc)
                return
            self.offset = offset


def _entries(
    redis_url: str, job_id: object, after: str, count: int = _PAGE
) -> list[tuple[str, bytes]]:
    raw: Any = client(redis_url).xrange(
        key(job_id), min=f"({after}" if after != "-" else "-", count=count
    )
    return [(_text(entry_id), bytes(fields[b"d"])) for entry_id, fields in raw]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_after(redis_url: str, job_id: object, after: str) -> tuple[bytes, str]:
    """What the stream holds after entry `after` ("-": from its start), a page at a time:
    the bytes and the last entry read."""
    entries = _entries(redis_url, job_id, after)
    if not entries:
        return b"", after
    return b"".join(data for _, data in entries), entries[-1][0]


def tail(
    redis_url: str, job_id: object, lines: int, max_bytes: int = logtail.MAX_TAIL_BYTES
) -> tuple[bytes, str]:
    """The stream's last `lines` lines (at most `max_bytes`), read backwards a page at a
    time, and the id of its last entry ("-" when it is empty)."""
    if lines <= 0:
        return b"", "-"
    redis_client: Any = client(redis_url)
    newest = redis_client.xrevrange(key(job_id), count=1)
    if not newest:
        return b"", "-"
    last = _text(newest[0][0])
    chunks: list[bytes] = []
    held = newlines = 0
    upper = "+"
    while held < max_bytes and newlines <= lines:
        page = redis_client.xrevrange(key(job_id), max=upper, count=_PAGE)
        if not page:
            break
        for _, fields in page:
            data = bytes(fields[b"d"])
            chunks.append(data)
            held += len(data)
            newlines += data.count(b"\n")
        upper = f"({_text(page[-1][0])}"
    data = b"".join(reversed(chunks))
    text, _ = logtail.tail_of(BytesIO(data), len(data), lines, max_bytes=max_bytes)
    return text, last


def whole_log(redis_url: str, job_id: object, out: BinaryIO) -> bool:
    """Write the stream, from its first entry ever, to `out`; False (and `out` partly
    written) when the stream has lost its start or Redis does not answer."""
    try:
        first = client(redis_url).get(_first_key(job_id))
        if first is None:
            return False
        after = "-"
        entries = _entries(redis_url, job_id, after)
        if not entries or entries[0][0] != _text(first):
            return False
        while entries:
            for _, data in entries:
                out.write(data)
            after = entries[-1][0]
            entries = _entries(redis_url, job_id, after)
    except redis.RedisError as exc:
        log.warning("job %s: log stream unreadable (%s)", job_id, exc)
        return False
    return True


def expire(redis_url: str, job_id: object) -> None:
    try:
        with client(redis_url).pipeline(transaction=False) as pipe:
            pipe.expire(key(job_id), ENDED_TTL_SECONDS)
            pipe.expire(_first_key(job_id), ENDED_TTL_SECONDS)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("job %s: log stream kept (%s)", job_id, exc)


def forget(redis_url: str, job_id: object) -> None:
    """Remove the job's stream (the job is deleted)."""
    try:
        client(redis_url).delete(key(job_id), _first_key(job_id))
    except redis.RedisError as exc:
        log.warning("job %s: log stream not removed (%s)", job_id, exc)
