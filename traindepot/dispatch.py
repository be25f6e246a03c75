"""The boundary between the API and the workers: the broker and the worker registry.

The API submits work and reads which workers are live only through this module; the worker
side (worker/celery_app.py, worker/capabilities.py, worker/tasks.py) uses the same names,
keys and broker settings from here. No torch, no task code: the API process never imports
the worker package. The settings and why they are what they are: docs/architecture.md,
"Celery and Redis".

- The queue carries job ids only; the `jobs` row is the truth.
- The worker registry: one Redis key per queue a worker consumes,
  `traindepot:workers:{queue}:{worker id}` -> `{"worker", "cuda", "bf16", "tf32", ...}`, with
  a TTL the worker refreshes; no key at all means "unknown".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from functools import lru_cache
from typing import Any

import redis
from celery import Celery

from traindepot.device_checks import WorkerDevices
from traindepot.queues import is_broker_name
from traindepot.redis_client import client
from traindepot.settings import get_settings

log = logging.getLogger(__name__)

TASK_NAME = "traindepot.run_job"
REGISTRY_PREFIX = "traindepot:workers"


def broker_settings() -> dict[str, Any]:
    """The Celery configuration both sides share (producers need the same priority steps
    and key separator as the consumers to address the same Redis lists)."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "task_default_queue": "default",
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_app() -> Celery:
    """A Celery app on the configured broker with the shared settings and no tasks: enough
    to send a task by name. The worker adds its task modules (worker/celery_app.py)."""
    settings = get_settings()
    app = Celery("traindepot", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    app.conf.update(broker_settings())
    return app


@lru_cache(maxsize=1)
def _producer() -> Celery:
    return make_app()


def enqueue(
    *, job_id: uuid.UUID, queue: str, priority: int, countdown: float | None = None
) -> None:
    """Send the job's id to its queue (call only after the row is committed), to be
    delivered now or after `countdown` seconds. Raises `kombu.exceptions.OperationalError`
    when the broker cannot be reached.

    The Redis transport serves priority 0 first; the spec's `priority` is 0..9 with 9 the
    most urgent, so it is inverted here. A name the broker keeps for itself is never written
    to, whatever the row says (ValueError)."""
    if is_broker_name(queue):
        raise ValueError(f"{queue!r} is a name the broker uses internally; not a job queue")
    _producer().send_task(
        TASK_NAME, args=[str(job_id)], queue=queue, priority=9 - priority, countdown=countdown
    )


def warm_up() -> None:
    """What the first `enqueue` of a process would build: the producer app, its router,
    queues and result backend, and a broker connection in its producer pool (the API's
    start-up warm-up, api/warmup.py). Raises what `enqueue` would when the broker cannot
    be reached."""
    app = _producer()
    amqp = app.amqp
    # `send_task` reads the app's result backend: its first read imports celery's backend
    # modules (30-40 ms of the first submit, py-spy).
    _ = amqp.router, amqp.queues, app.backend
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=1)


def worker_id() -> str:
    """This worker's identity: its registry key and the owner of the leases it takes."""
    return f"{socket.gethostname()}:{os.getpid()}"


def registry_key(queue: str, worker: str) -> str:
    return f"{REGISTRY_PREFIX}:{queue}:{worker}"


def live_workers(*, redis_url: str, queue: str) -> list[WorkerDevices] | None:
    """The registered live workers of `queue`; None when Redis cannot be read (unknown)."""
    try:
        redis_client = client(redis_url)
        keys = list(redis_client.scan_iter(match=registry_key(queue, "*"), count=200))
        values = redis_client.mget(keys) if keys else []
    except redis.RedisError as exc:
        log.warning("cannot read worker devices from Redis: %s", exc)
        return None
    found: list[WorkerDevices] = []
    for raw in values:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            data = json.loads(raw)
            found.append(
                WorkerDevices(
                    worker=str(data["worker"]),
                    cuda=bool(data["cuda"]),
                    bf16=bool(data["bf16"]),
                    tf32=bool(data.get("tf32", False)),
                    devices=int(data.get("devices", 1)),
                )
            )
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed worker registration: %r", raw)
    return found


def registered_workers(*, redis_url: str) -> list[tuple[str, str, float | None]]:
    """Every live registration as (queue, worker, heartbeat_at: unix time of its last
    refresh, None for a registration that does not say). Raises `redis.RedisError`."""
    redis_client = client(redis_url)
    keys = list(redis_client.scan_iter(match=registry_key("*", "*"), count=200))
    values = redis_client.mget(keys) if keys else []
    found: list[tuple[str, str, float | None]] = []
    prefix = f"{REGISTRY_PREFIX}:"
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            continue
        name = key.decode() if isinstance(key, bytes) else str(key)
        queue, _, worker = name.removeprefix(prefix).partition(":")
        try:
            data = json.loads(raw)
            beat = data.get("heartbeat_at")
            found.append((queue, str(data.get("worker", worker)), float(beat) if beat else None))
        except (ValueError, TypeError, AttributeError):
            log.warning("ignoring a malformed worker registration: %r", raw)
    return found
