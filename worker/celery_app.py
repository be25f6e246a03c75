"""The Celery app. The queue carries job ids only; the `jobs` row is the truth.

Settings, and why (see DESIGN.md on the Redis broker). The worker runs the solo pool: the task
runs on the consumer's own thread and starts one training child per job (worker/supervisor.py).
- `task_acks_late`: a message is acknowledged only after its task returns, so a worker that
  dies between receiving a job and claiming it does not lose the job. Redelivery of a job that
  is already running or done is harmless: the claim in Postgres (`queued -> running`) fails and
  the task returns at once, acknowledging the duplicate.
- `task_reject_on_worker_lost`: only acts when a prefork pool's child dies; kept so that a
  prefork deployment also requeues the message instead of acknowledging it. With the solo pool
  a SIGKILLed worker acknowledges nothing: its message stays in Redis' unacked set until
  `visibility_timeout` and is then redelivered (a no-op: the claim fails). The job itself is
  requeued much sooner by the lease reaper (worker/reaper.py), which re-sends its id.
- `worker_prefetch_multiplier = 1`: a GPU worker holds one job at a time; the rest stay in
  Redis for other workers.
- `visibility_timeout`: Redis redelivers an unacked message after this long even if its task
  still runs (celery#5935); that duplicate is a no-op thanks to the claim, and lost workers
  are detected by the lease reaper, not by this timeout. We keep it at 1 hour.
- `worker_cancel_long_running_tasks_on_connection_loss = False` (the default, set to say so):
  with the solo pool the consumer cannot even see a broker connection loss while a task runs
  (the task holds its thread), and cancelling would be wrong anyway: the training does not
  need Redis, and the row, not the broker, owns the job. After the task returns the consumer
  notices the lost connection and reconnects (`broker_connection_max_retries = None`: forever).
- Redis restarted without persistence: the queues and the unacked set are gone. The running
  job is unaffected (seen in tests/integration/test_faults.py: the consumer logs the lost
  connection once the task returns, reconnects and takes new jobs); ids that were waiting in
  the queue are re-sent by the reaper, for which a queued row not picked up within
  `requeue_stale_seconds` is stale; an id the reaper or a warm shutdown could not send while
  Redis was down keeps `enqueued_at` NULL and is re-sent on the next pass. A warm shutdown
  (SIGTERM) returns reserved, unstarted messages to the queue (kombu restores unacked
  messages when the channel closes) and the running job checkpoints and is requeued.
- No result backend: the job row is the result.
- Priorities: the Redis transport emulates them with one list per step, and 0 is served
  first; the spec's `priority` is 0..9 with 9 the most urgent, so it is inverted here.
"""

from __future__ import annotations

import uuid

from celery import Celery

from traindepot.queues import is_broker_name
from traindepot.settings import get_settings

TASK_NAME = "traindepot.run_job"


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("traindepot", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="default",
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": 3600,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    app.conf.imports = ("worker.tasks", "worker.capabilities")
    return app


app = make_app()


def enqueue(*, job_id: uuid.UUID, queue: str, priority: int) -> None:
    """Send the job's id to its queue (call only after the row is committed). A name the
    broker keeps for itself is never written to, whatever the row says."""
    if is_broker_name(queue):
        raise ValueError(f"{queue!r} is a name the broker uses internally; not a job queue")
    app.send_task(TASK_NAME, args=[str(job_id)], queue=queue, priority=9 - priority)
