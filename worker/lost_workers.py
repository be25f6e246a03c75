"""A lost worker's wake-ups, sent again.

A worker that dies without its warm shutdown (SIGKILL, a machine gone) takes with it the
wake-ups it held: the message it had reserved (the Redis transport gives an unacked message
back only after `visibility_timeout`, an hour), the delayed wake-up waiting for its countdown
(worker/tasks.py `_wake`: the one message that keeps a queue with held-back jobs awake), and
the claim it would have made when its job ended. Its running job comes back through its
lease (worker/reaper.py). A job queued behind it, whose wake-up that worker had consumed,
would wait for `requeue_stale_seconds`, with other workers idle.

So each reaper notes the workers' registrations (worker/capabilities.py) every third of
their TTL. A registration that is gone at the next look ran out without a warm shutdown,
which marks its worker stopped before it unregisters: the worker is lost. The first reaper
to mark the loss (SET NX: one among all the reapers) sends one wake-up to each queue of the
lost worker that has a queued job. A wake-up that finds nothing to claim is harmless, as
any other.

A reaper knows only the losses that happen while it runs; a worker lost before it ever
registered (within its first seconds) is left to `requeue_stale_seconds`.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from traindepot.dispatch import REGISTRY_PREFIX, registered_workers
from traindepot.redis_client import client
from worker import wakeups

log = logging.getLogger(__name__)

# Long enough that a lost worker's id (host:pid) is never mistaken for a new one's.
MARK_SECONDS = 24 * 3600


def _mark_key(worker: str) -> str:
    return f"{REGISTRY_PREFIX}-ended:{worker}"


def mark_stopped(redis_url: str, worker: str) -> None:
    """A warm shutdown's mark: the registration that disappears next is no loss."""
    client(redis_url).set(_mark_key(worker), "stopped", ex=MARK_SECONDS)


def _mark_lost(redis_url: str, worker: str) -> bool:
    """True for the one reaper that marks `worker` lost first (none after a warm shutdown's
    mark)."""
    return bool(client(redis_url).set(_mark_key(worker), "lost", nx=True, ex=MARK_SECONDS))


class LostWorkers:
    """One reaper's view of the registrations, from one look to the next: at most every
    `every` seconds (a third of the registrations' TTL: a loss is seen a TTL late anyway,
    and a look scans Redis' keys)."""

    def __init__(self, redis_url: str, every: float = 0.0) -> None:
        self.redis_url = redis_url
        self.every = every
        self.next_look = 0.0
        self.seen: dict[str, set[str]] | None = None  # worker -> its queues
        # Losses this reaper marked whose queues are not all woken yet (the database or the
        # broker failed meanwhile): the next look tries them again, as no other reaper will.
        self.pending: dict[str, set[str]] = {}

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next_look:
            return False
        self.next_look = now + self.every
        return True

    def check(self) -> dict[str, list[str]]:
        """Wake the queues of the workers lost since the last look; returns them (lost
        worker -> queues woken). Raises `redis.RedisError`, and the database's errors."""
        live: dict[str, set[str]] = defaultdict(set)
        for queue, worker, _ in registered_workers(redis_url=self.redis_url):
            live[worker].add(queue)
        for worker, queues in (self.seen or {}).items():
            if worker not in live and _mark_lost(self.redis_url, worker):
                self.pending[worker] = set(queues)
        self.seen = dict(live)  # after the marks: a look that fails before is made again
        woken: dict[str, list[str]] = {}
        for worker in sorted(self.pending):
            sent = woken.setdefault(worker, [])
            for queue in sorted(self.pending[worker]):
                if _wake(queue):  # raises: the rest is tried at the next look
                    sent.append(queue)
                self.pending[worker].discard(queue)
            del self.pending[worker]
            log.warning(
                "worker %s lost (its registration ran out); wake-ups sent to %s",
                worker,
                sent or "no queue (none has a queued job)",
            )
        return woken


def _wake(queue: str) -> bool:
    """One wake-up now for `queue`'s most urgent queued job, if it has one."""
    return wakeups.wake([queue])
