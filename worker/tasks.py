"""The Celery task: a wake-up. The worker claims the most urgent job it can run on its free
devices (db/scheduling.py, worker/devices.py), supervises it, and claims again until
nothing is left for it. A worker with several devices runs one task thread per device, so
as many jobs at once as its devices allow.

A message names the job whose submit (or requeue) sent it, but only as a hint for the log:
the jobs table decides what runs next (docs/architecture.md, "The scheduler"). So that no
queued job is stranded, a worker that ends its round while jobs of its queues still wait
(held back by their tenant's running limit, or by devices) sends one delayed wake-up: each
message consumed sends at most one, so wake-ups never multiply.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from kombu.exceptions import OperationalError as BrokerError

from db import gangs, jobs, scheduling, tenants
from db.retry import retry_db
from db.session import session_scope
from traindepot.dispatch import TASK_NAME, worker_id
from traindepot.settings import Settings, get_settings
from worker import devices, gang, hub_token, reaper, wakeups, warm
from worker.celery_app import app
from worker.child_env import training_environment
from worker.launcher import NodeOf
from worker.supervisor import Supervisor, shutting_down

log = logging.getLogger(__name__)


@app.task(name=TASK_NAME, ignore_result=True, bind=True)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: str) -> None:
    settings = get_settings()
    queues = _queues(self)
    pool = devices.owned.get()
    ran = 0
    while not shutting_down.is_set():
        with pool.claiming():
            # A gang first (db/gangs.py): a seat holds devices for a job of several nodes;
            # a drain takes no new small job, so that a gang waiting past its hold starts.
            decision = _look(settings, queues, pool)
            seat = decision.seat
            held = [] if seat is None else pool.take(seat.devices)
            claimed = None if seat is not None or decision.drain else _claim(settings, queues, pool)
            taken = [] if claimed is None else pool.take(claimed.gpus)
        if seat is not None:
            ran += 1
            try:
                _run_node(settings, queues, seat, decision.started, held, pool)
            finally:
                pool.give_back(held)
            continue
        if claimed is None:
            break
        ran += 1
        log.info(
            "woken by job %s; claimed job %s attempt %s on %s",
            job_id,
            claimed.job_id,
            claimed.attempt,
            ",".join(taken),
        )
        try:
            _supervise(settings, claimed, pool.child_env(taken), ranks=len(taken))
        finally:
            pool.give_back(taken)
    if ran == 0:
        log.info("woken by job %s; nothing for this worker to claim", job_id)
    if not shutting_down.is_set():
        _wake(settings, queues, later=True)


def _claimant(
    settings: Settings, queues: list[str], pool: devices.DevicePool
) -> scheduling.Claimant:
    return scheduling.Claimant(
        queues=queues,
        worker=worker_id(),
        lease_seconds=settings.lease_seconds,
        free_gpus=pool.free,
        total_gpus=pool.total,
        default_quota=tenants.Quota(
            settings.max_active_jobs_per_tenant, settings.max_running_jobs_per_tenant
        ),
    )


@retry_db(give_up_after_seconds=120)
def _look(settings: Settings, queues: list[str], pool: devices.DevicePool) -> gangs.Decision:
    return gang.look(settings, _claimant(settings, queues, pool))


def _run_node(
    settings: Settings,
    queues: list[str],
    seat: gangs.Seat,
    started: bool,
    held: list[str],
    pool: devices.DevicePool,
) -> None:
    """Hold `seat` until its gang starts, then run this worker's node of the job."""
    log.info("job %s: seat %s taken on %s", seat.job_id, seat.id, ",".join(held))
    if not started:
        # Another worker may have the devices for the next seat: wake one now.
        _wake(settings, queues, job_id=seat.job_id, later=False)
    node = gang.wait(settings, seat, shutting_down)
    if node is None:
        log.info("job %s: seat %s given up", seat.job_id, seat.id)
        return
    log.info(
        "job %s attempt %s: node %s of %s, rendezvous %s:%s",
        node.job_id,
        node.attempt,
        node.rank,
        node.nodes,
        *node.endpoint,
    )
    _supervise(
        settings,
        scheduling.Claimed(job_id=node.job_id, attempt=node.attempt, gpus=node.devices),
        pool.child_env(held),
        ranks=len(held),
        node=gang.node_of(settings, node),
    )


def _queues(task: Any) -> list[str]:
    """The queues this worker consumes (a wake-up on any of them serves all of them)."""
    consumed = sorted(task.app.amqp.queues.consume_from or ())
    if consumed:
        return consumed
    routing_key = (task.request.delivery_info or {}).get("routing_key")
    return [routing_key or "default"]


# A claim outlives a short database outage (a restart, "too many clients"): the wake-up
# that started it is already consumed, and without a claim the job would wait for the
# reaper's re-send (`requeue_stale_seconds`).
@retry_db(give_up_after_seconds=120)
def _claim(
    settings: Settings, queues: list[str], pool: devices.DevicePool
) -> scheduling.Claimed | None:
    with session_scope() as session:
        return scheduling.claim_next(session=session, claimant=_claimant(settings, queues, pool))


def _supervise(
    settings: Settings,
    claimed: scheduling.Claimed,
    devices_env: dict[str, str],
    *,
    ranks: int,
    node: NodeOf | None = None,
) -> None:
    with session_scope() as session:
        job = jobs.get(session=session, job_id=claimed.job_id)
        assert job is not None  # claimed in a committed transaction; never deleted while active
        started_at = job.started_at
        limit = (job.spec.get("limits") or {}).get("max_runtime_seconds")
        sweep_id = job.sweep_id
        resume = job.spec.get("resume_from_checkpoint")
        secrets_env = hub_token.child_env(session, settings, job.tenant, job.spec)
    # A spec stored without a time limit (before the server filled in its default) gets the
    # default; none runs past the server's maximum.
    runtime = settings.default_max_runtime_seconds if limit is None else float(limit)
    Supervisor(
        job_id=claimed.job_id,
        attempt=claimed.attempt,
        settings=settings,
        started_at=started_at,
        max_runtime_seconds=min(runtime, settings.max_runtime_seconds),
        devices_env=devices_env,
        ranks=ranks,
        resume_from_checkpoint=resume,
        secrets_env=secrets_env,
        node=node,
    ).run()
    if sweep_id is not None:
        # A trial ended (or was given back): tell the study and ask the next trials before
        # this worker claims again, so that it can take one of them (db/sweeps.py).
        reaper.drive_sweep(settings, sweep_id)


def _wake(
    settings: Settings, queues: list[str], *, job_id: uuid.UUID | None = None, later: bool
) -> None:
    """One wake-up for the most urgent job still waiting in `queues`: for `job_id` (the gang
    this worker just sat in) at once, or, `later`, for a job this worker could not take, in
    `tenant_busy_retry_seconds`. One message, whatever the number of queues, so that
    wake-ups never multiply (the reaper re-sends one that is lost)."""
    try:
        wakeups.wake(
            queues,
            job_id=job_id,
            countdown=settings.tenant_busy_retry_seconds if later else None,
        )
    except BrokerError as exc:
        log.warning("queues %s: wake-up not sent (%s); the reaper re-sends", queues, exc)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reaper(**_: object) -> None:
    settings = get_settings()
    reaper.start(settings)
    # The first job starts warm too: the template imports while the worker waits.
    warm.starter.prepare(settings, training_environment(settings))


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_: object) -> None:
    # Warm shutdown: the running job checkpoints, stops and goes back to the queue.
    shutting_down.set()
