"""The reaper: returns jobs whose lease expired to the queue (or fails them once their
restarts are spent), re-sends queued jobs whose message may have been lost, wakes the
queues of a lost worker (worker/lost_workers.py), and drives the active sweeps
(db/sweeps.py), whose trials may have ended by its hand or any other.

It runs as a daemon thread in every worker (and in `traindepot serve`). Each pass is a few
conditional UPDATEs, so several reapers at once are harmless: a job is reaped once.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import SQLAlchemyError

from db import jobs, reaping, sweeps
from db.session import session_scope
from traindepot import events
from traindepot.dispatch import enqueue
from traindepot.settings import Settings
from worker.lost_workers import LostWorkers

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> reaping.Reaped:
    with session_scope() as session:
        reaped = reaping.reap_expired(session=session)
        stale = reaping.stale_queued(
            session=session, older_than_seconds=settings.requeue_stale_seconds
        )
        to_send = list(reaped.requeued) + [j for j in stale if j not in reaped.requeued]
        sends = []
        for job_id in to_send:
            job = jobs.get(session=session, job_id=job_id)
            if job is not None:
                sends.append((job_id, job.queue, job.priority))
        changes = []
        for job_id in (*reaped.requeued, *reaped.failed, *reaped.cancelled):
            job = jobs.get(session=session, job_id=job_id)
            if job is not None:
                changes.append((job_id, str(job.status), job.attempt, job.result, job.error))
    if reaped.requeued or reaped.failed or reaped.cancelled:
        log.warning(
            "reaper: requeued %s, failed (worker_lost) %s, cancelled %s",
            reaped.requeued,
            reaped.failed,
            reaped.cancelled,
        )
    # After the commit: a message never names a row another session cannot see yet.
    for job_id, status, attempt, result, error in changes:
        events.publish_status(
            settings, job_id, status=status, attempt=attempt, result=result, error=error
        )
    for job_id, queue, priority in sends:
        # One job's failing send (a broker error of its own, a refused queue) must not keep
        # the others from being sent: each is handled here and retried on the next pass.
        try:
            send(job_id=job_id, queue=queue, priority=priority)
        except Exception:
            log.exception("reaper: job %s could not be sent to queue %r", job_id, queue)
    with session_scope() as session:
        active = sweeps.active_ids(session=session)
    for sweep_id in active:
        drive_sweep(settings, sweep_id, wait=False)
    return reaped


def drive_sweep(settings: Settings, sweep_id: uuid.UUID, *, wait: bool = True) -> None:
    """One pass of the sweep's driver; a failure is logged and left to the next pass (each
    pass does whatever is left to do). `wait=False`: skip a sweep another process drives
    now."""
    try:
        sweeps.drive(settings, sweep_id, wait=wait)
    except Exception:
        log.exception("sweep %s: driver pass failed; the reaper tries again", sweep_id)


def send(*, job_id: uuid.UUID, queue: str, priority: int) -> bool:
    """Enqueue a committed queued job, then record that it was sent. Marked only after the
    broker took it: while Redis is down the job keeps `enqueued_at` NULL and the next pass
    tries again, instead of waiting `requeue_stale_seconds`."""
    try:
        enqueue(job_id=job_id, queue=queue, priority=priority)
    except KombuOperationalError as exc:
        log.warning("job %s: not enqueued, broker unavailable (%s); will retry", job_id, exc)
        return False
    with session_scope() as session:
        jobs.mark_enqueued(session=session, job_id=job_id)
    return True


def start(settings: Settings) -> threading.Event:
    """Start the reaper thread; set the returned event to stop it."""
    stop = threading.Event()

    lost = LostWorkers(settings.require_redis_url(), settings.worker_registration_ttl_seconds / 3)

    def loop() -> None:
        while not stop.wait(settings.reaper_interval_seconds):
            try:
                reap_once(settings)
            except SQLAlchemyError as exc:
                log.warning("reaper: database unavailable (%s)", exc)
            except Exception:
                log.exception("reaper: pass failed")
            if not lost.due():
                continue
            try:
                lost.check()
            except (SQLAlchemyError, redis.RedisError, KombuOperationalError) as exc:
                log.warning("reaper: lost workers not checked (%s)", exc)
            except Exception:
                log.exception("reaper: the check of lost workers failed")

    threading.Thread(target=loop, name="traindepot-reaper", daemon=True).start()
    return stop
