"""One wake-up for the most urgent queued job of some queues (worker/tasks.py after a round,
worker/lost_workers.py for a lost worker's queues): a message names a job only as a hint,
and any worker of those queues that takes it claims what the jobs table says is next."""

from __future__ import annotations

import uuid

from db import scheduling
from db.session import session_scope
from traindepot.dispatch import enqueue


def wake(
    queues: list[str], *, job_id: uuid.UUID | None = None, countdown: float | None = None
) -> bool:
    """Send it (named `job_id`, else the waiting job), now or in `countdown` seconds; False
    when no job of `queues` is queued. Raises the broker's `OperationalError`."""
    with session_scope() as session:
        hint = scheduling.waiting(session=session, queues=queues)
    if hint is None:
        return False
    waiting_id, queue, priority = hint
    enqueue(job_id=job_id or waiting_id, queue=queue, priority=priority, countdown=countdown)
    return True
