"""The API's one way to the database: `await run_db(work)`.

`work(session)` runs in a worker thread with a session of its own; the thread commits (when
asked), closes the session and so gives its connection back to the pool before it is freed.
No connection is ever held across an `await`, and no thread ever waits for a connection
that only another thread could return: this is what stalled the API for 30 s under 64
readers, when a sync `yield` dependency held sessions that only a free thread could close.

Admission happens before a thread is taken. A request first takes one of `pool capacity`
slots (an async wait, no thread held); with the slots and the threads sized like the
connection pool, a thread never waits on the pool. A request that cannot get a slot within
`api_db_wait_seconds` is answered `503` with `Retry-After` at once (`Saturated`): under
overload the API says so quickly instead of queueing without bound. See
docs/architecture.md, "The API and the database".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session

from db.session import new_session
from traindepot.settings import get_settings

T = TypeVar("T")


after_commit: list[Callable[[], None]] = []
"""Called, on the event loop, after each commit of `run_db(..., commit=True)` (the job
document cache, api/job_docs.py, empties itself)."""


class Saturated(Exception):
    """Every database slot stayed taken for `api_db_wait_seconds`: answered 503 at once."""


@lru_cache(maxsize=1)
def _limiters() -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
    """(admission slots, threads), both sized like the connection pool. Created on first
    use, inside the running event loop."""
    capacity = get_settings().db_pool_capacity
    return anyio.CapacityLimiter(capacity), anyio.CapacityLimiter(capacity)


def _in_session(work: Callable[[Session], T], commit: bool, autocommit: bool) -> T:
    # The API's pool keeps every connection it admits calls for and does not ping
    # (db/session.py `get_engine`); `autocommit` spares a read of single statements the
    # BEGIN and ROLLBACK round trips: new connections and round trips, not CPU, were what
    # a read waited on under load (docs/benchmarks.md).
    session = new_session(api=True, autocommit=autocommit)
    try:
        value = work(session)
        if commit:
            session.commit()
        return value
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def run_db(
    work: Callable[[Session], T], *, commit: bool = False, autocommit: bool = False
) -> T:
    """Run `work(session)` in a thread with a session of its own, at most `pool capacity`
    at once; raise `Saturated` when no slot frees up within `api_db_wait_seconds`.
    `autocommit`: each statement on its own, for a read whose statements need no common
    snapshot and no transaction (a server-side cursor needs one)."""
    slots, threads = _limiters()
    try:
        # A free slot is taken at once; only a wait needs the timeout's cancel scope,
        # which was a tenth of a read's CPU (py-spy, docs/benchmarks.md).
        slots.acquire_nowait()
    except anyio.WouldBlock:
        try:
            with anyio.fail_after(get_settings().api_db_wait_seconds):
                await slots.acquire()
        except TimeoutError:
            raise Saturated("the API is at capacity; retry shortly") from None
    try:
        value = await anyio.to_thread.run_sync(
            _in_session, work, commit, autocommit, limiter=threads
        )
    finally:
        slots.release()
    if commit:
        for hook in after_commit:
            hook()
    return value
