"""Queue names: which a spec may use, and the names the broker keeps for itself.

kombu's Redis transport stores its own keys beside the queue lists (`unacked`,
`unacked_index`, `unacked_mutex`, `_kombu.binding.*`), and Celery's remote control and
events use `*.celery.pidbox` and `celeryev*` queues. A job queue under one of those names
writes a list where the broker keeps a hash or a set, and every worker on that Redis
database fails from then on. Such a name can never be a queue, even if configured.
"""

from __future__ import annotations

import re

__all__ = ["QUEUE_NAME", "check_queue_name", "is_broker_name"]

# The shape of a queue name (also the spec's `queue` pattern).
QUEUE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")

_BROKER_NAMES = frozenset({"unacked", "unacked_index", "unacked_mutex", "celeryev"})
_BROKER_PREFIXES = ("_kombu", "unacked", "celeryev", "celery.pidbox", "reply.celery")
_BROKER_SUFFIXES = (".celery.pidbox", ".reply.celery.pidbox")


def is_broker_name(name: str) -> bool:
    """Whether the broker (kombu, Celery) uses `name` for a key or queue of its own."""
    lowered = name.lower()
    return (
        lowered in _BROKER_NAMES
        or lowered.startswith(_BROKER_PREFIXES)
        or lowered.endswith(_BROKER_SUFFIXES)
        or "pidbox" in lowered
    )


def check_queue_name(name: str) -> str | None:
    """Why `name` cannot be a queue, or None when it can."""
    if is_broker_name(name):
        return f"{name!r} is a name the broker uses internally; it can never be a job queue"
    if not QUEUE_NAME.match(name):
        return (
            f"{name!r} is not a queue name: lowercase letters, digits, `_`, `.` and `-`,"
            " starting with a letter or a digit, at most 63 characters"
        )
    return None
