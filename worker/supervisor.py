"""Supervises one attempt of a job: starts the training child, watches it while the lease
(worker/lease.py) is renewed, turns a cancel, the time limit or a warm shutdown into a
cooperative stop, and writes what the outcome (worker/outcome.py) means for the job
(worker/attempt_end.py).

The supervisor never imports torch: CUDA lives only in the child, which gets a fresh
context and gives all of its memory back when it exits.

A job of several devices runs as several ranks: the child is then torch's launcher
(worker/launcher.py), always started cold, and the stop is a file its ranks watch
(worker/ranks.py) instead of a signal; the outcome is rank 0's, failed with the first rank
error if any rank raised.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from db import attempts
from db.models import JobStatus
from db.retry import TRANSIENT
from db.session import session_scope
from traindepot import events, lifetime
from traindepot.logtail import tail
from traindepot.settings import Settings
from traindepot.store import ArtifactStore, open_store
from worker import attempt_end, budget, gang, launcher, network, ranks, warm
from worker.child_env import training_environment
from worker.control import control
from worker.lease import Lease
from worker.outcome import (
    StopReason,
    Verdict,
    first_rank_error,
    read_outcome,
    verdict,
    with_rank_errors,
)
from worker.store_sync import AttemptStore, store_error

log = logging.getLogger(__name__)

# Set by the Celery `worker_shutting_down` signal: stop the child at a checkpoint and put
# the job back in the queue instead of failing it.
shutting_down = threading.Event()


class Supervisor:
    def __init__(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        settings: Settings,
        started_at: datetime | None = None,
        max_runtime_seconds: float | None = None,
        devices_env: dict[str, str] | None = None,
        ranks: int = 1,
        resume_from_checkpoint: object = None,
        secrets_env: dict[str, str] | None = None,
        node: launcher.NodeOf | None = None,
    ) -> None:
        self.job_id = job_id
        # Node k of a job of several nodes (worker/gang.py): its ranks join the other
        # nodes' at node 0's rendezvous; node 0 alone writes the job's status.
        self.node = node
        # The job's devices (`CUDA_VISIBLE_DEVICES`, worker/devices.py).
        self.devices_env = devices_env or {}
        # The tenant's secrets this job uses (`HF_TOKEN`, worker/hub_token.py): in the
        # environment of this job's child only, never logged.
        self.secrets_env = secrets_env or {}
        # One process per device when the job has several (worker/launcher.py).
        self.ranks = ranks
        self.multirank = ranks > 1 or node is not None
        self.attempt = attempt
        self.settings = settings
        self.job_dir = settings.job_dir(job_id).resolve()
        self.stop_reason: StopReason | None = None
        self.lease_lost = False
        self.overrun: budget.Overrun | None = None  # over its memory or disk budget
        self._kill_at: float | None = None
        # The time limit counts from the job's first start, across its attempts.
        self.max_runtime_seconds = max_runtime_seconds
        self.deadline = (
            None
            if max_runtime_seconds is None or started_at is None
            else started_at.timestamp() + max_runtime_seconds
        )
        self.lease = Lease(
            job_id=job_id,
            attempt=attempt,
            settings=settings,
            node=None if node is None else node.rank,
        )
        self._child: warm.TrainingChild | None = None  # once started
        self._stop_lock = threading.Lock()  # the watch loop and the control thread stop it
        self.resume_from_checkpoint = resume_from_checkpoint
        # With an artifact store (opened in `run`, once the lease renews): restores before
        # the child, uploads during and after it.
        self.store: AttemptStore | None = None
        self.restore_from: ArtifactStore | None = None

    def on_change(self, status: str | None, attempt: int | None) -> None:
        """A notice from worker/control.py (its thread): a cancel of this attempt stops the
        child now, not at the next lease renewal; any other change of the job, or one
        that may have been missed, is read by renewing the lease now."""
        if attempt == self.attempt and status == JobStatus.CANCELLING:
            self.lease.status = JobStatus.CANCELLING  # the watch loop's view, if no child yet
            child = self._child
            if child is not None:
                self._stop(child, "cancelled")
        else:
            self.lease.renew_now()

    def run(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if self.node is None or self.node.rank == 0:  # one job, one voice: node 0's
            events.publish(
                self.settings,
                self.job_id,
                {"type": "status", "status": "running", "attempt": self.attempt},
            )
        log_path = self.job_dir / "train.log"
        self.lease.start()
        watcher = control(self.settings)
        watcher.watch(self.job_id, self.on_change)
        # A cancel committed between the claim and the LISTEN above: read it now.
        self.lease.renew_now()
        try:
            # After the lease's first renewal was asked: opening a store can take seconds
            # (its client's first import), longer than a short lease on a loaded machine.
            self._open_store()
            if self.store is not None:
                self.store.before_child(log_path)
            if self.restore_from is not None:
                gang.restore(
                    self.restore_from, self.settings, self.job_id, self.attempt, self.ranks
                )
            with log_path.open("ab") as log_file:
                env = self._child_env()
                if self.multirank:
                    # The prepared process is a single training process: ranks start cold.
                    prepared, how = None, f"{self.ranks} ranks, cold start: torch's launcher"
                    if self.node is not None:
                        how += f", node {self.node.rank} of {self.node.nodes}"
                else:
                    prepared, how = warm.starter.take(self.settings, env)
                header = f"--- attempt {self.attempt} started {_now()} ({how}) ---\n"
                log_file.write(header.encode())
                log_file.flush()
                child: warm.TrainingChild | None = None
                if prepared is not None:
                    child = self._start_warm(prepared, log_path, log_file)
                if child is None:
                    # The job's secrets only here and in `_start_warm`'s job env: never in
                    # the environment a template process may be started with (`take`).
                    child = self._start_cold(log_file, {**env, **self.secrets_env})
                self._child = child
                self._record_start("cold" if isinstance(child, subprocess.Popen) else "warm")
                self._watch(child)
                log_file.write(
                    f"--- attempt {self.attempt} ended {_now()} "
                    f"(exit code {child.returncode}"
                    f"{', lease lost' if self.lease_lost else ''}) ---\n".encode()
                )
            if self.lease_lost:
                if self.store is not None:
                    self.store.lost()
                log.warning(
                    "job %s attempt %s: lease lost; results left to the newer attempt",
                    self.job_id,
                    self.attempt,
                )
                return
            # The lease is still renewed while the terminal status is written: a database
            # outage at this point must not get a finished job reaped and run again.
            self._finish(child.returncode, log_path)
        finally:
            watcher.forget(self.job_id)
            self.lease.stop()
            if self.restore_from is not None:
                gang.release(self.job_id)

    def _open_store(self) -> None:
        store = open_store(self.settings)
        if store is None:
            return
        if self.node is not None and self.node.rank > 0:
            # Node k > 0 only brings in the checkpoint to resume from: node 0 uploads the
            # job's files (its checkpoints, model and log).
            self.restore_from = store
            return
        self.store = AttemptStore(
            store,
            self.settings,
            job_id=self.job_id,
            attempt=self.attempt,
            job_dir=self.job_dir,
            ranks=self.ranks,
            resume_from_checkpoint=self.resume_from_checkpoint,
        )

    def _start_cold(self, log_file: BinaryIO, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A fresh Python: `python -m worker.runner JOB ATTEMPT`, or for several ranks
        `python -m worker.launcher N JOB ATTEMPT`."""
        argv = (
            launcher.command(self.ranks, str(self.job_id), self.attempt, self.node)
            if self.multirank
            else [sys.executable, "-m", "worker.runner", str(self.job_id), str(self.attempt)]
        )
        return subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The kernel kills it when the worker dies (SIGKILL included), so an orphaned
            # attempt can never train beside the next one. Tied to the thread that forks:
            # the solo pool's main thread, or a threads pool's task thread, both as long-lived
            # as the worker.
            preexec_fn=_cold_child_set_up(),
            start_new_session=True,  # terminal signals go to the worker, not the child
            # The job's directory, not the worker's: `from_pretrained("gpt2")` looks
            # for a ./gpt2 directory first. The project is imported as an installed
            # package, whatever the directory.
            cwd=self.job_dir,
            env=env,
        )

    def _start_warm(
        self, prepared: warm.Prepared, log_path: Path, log_file: BinaryIO
    ) -> warm.TrainingChild | None:
        """The child forked from the worker's prepared process (worker/warm.py); None if
        that failed (the cold path then starts it)."""
        try:
            return warm.starter.start(
                prepared,
                job_id=self.job_id,
                attempt=self.attempt,
                job_dir=self.job_dir,
                log_path=log_path,
                job_env={**self.devices_env, **self.secrets_env},
            )
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("job %s: warm start failed (%s); starting cold", self.job_id, exc)
            log_file.write(f"--- warm start failed ({exc}); cold start ---\n".encode())
            log_file.flush()
            return None

    def _record_start(self, start: str) -> None:
        """Best effort, for the attempt history (`GET /jobs/{id}`): warm or cold."""
        try:
            with session_scope() as session:
                attempts.record_start(
                    session=session, job_id=self.job_id, attempt=self.attempt, start=start
                )
        except TRANSIENT as exc:
            log.warning("job %s: start not recorded (%s)", self.job_id, exc)

    def _child_env(self) -> dict[str, str]:
        """The training child's environment (worker/child_env.py) with this job's devices
        (`CUDA_VISIBLE_DEVICES`, worker/devices.py); a node of a job of several nodes puts
        its ranks' collectives on the advertised interface (worker/network.py)."""
        nodes = network.collective_env(self.settings) if self.node is not None else {}
        return {**training_environment(self.settings), **self.devices_env, **nodes}

    # --- while the child runs -------------------------------------------------------------
    def _watch(self, child: warm.TrainingChild) -> None:
        # Self-fencing: the reaper may requeue the job once `lease_seconds` pass without a
        # renewal, so the child is killed well before that (0.8 of it) when the database
        # cannot be reached; two attempts never train at once.
        fence_after = self.settings.lease_seconds * 0.8
        limits = budget.for_child(child.pid, self.job_dir, self.settings)
        while True:
            try:
                child.wait(timeout=0.2)
                return
            except subprocess.TimeoutExpired:
                pass
            self.overrun = limits.exceeded()
            if self.overrun is not None:
                log.warning("job %s: %s; killing the training process", self.job_id, self.overrun)
                budget.kill_tree(child.pid)
                child.wait()
                return
            lost = self.lease.lost.is_set()
            if lost or self.lease.seconds_since_renewal() > fence_after:
                log.warning(
                    "job %s attempt %s: %s; killing the training process",
                    self.job_id,
                    self.attempt,
                    "lease lost" if lost else "lease not renewed in time",
                )
                self.lease_lost = True
                child.kill()
                child.wait()
                return
            if self.lease.status is JobStatus.CANCELLING:
                self._stop(child, "cancelled")
            if self.deadline is not None and time.time() >= self.deadline:
                self._stop(child, "timeout")
            if shutting_down.is_set():
                self._stop(child, "shutdown")
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                log.warning(
                    "job %s: child did not stop within the grace period; killing it", self.job_id
                )
                child.kill()
                self._kill_at = None

    def _stop(self, child: warm.TrainingChild, reason: StopReason) -> None:
        with self._stop_lock:
            if self.stop_reason is not None:
                return
            self.stop_reason = reason
        self._kill_at = time.monotonic() + self.settings.cancel_grace_seconds
        log.info("job %s: stopping training (%s)", self.job_id, reason)
        if self.multirank:
            # The launcher would die of SIGUSR1; its ranks watch this file (worker/ranks.py).
            # Every node's ranks agree on it at each step, so one node's stop stops all.
            ranks.stop_path(self.job_dir, self.attempt).touch()
            return
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGUSR1)

    # --- after the child exited -----------------------------------------------------------
    def _finish(self, returncode: int, log_path: Path) -> None:
        outcome = read_outcome(self.job_dir, self.attempt)
        if self.node is not None:
            # One job, one fate (worker/gang.py): every node records its end; node 0 waits
            # for the others' and decides for all of them.
            ends = gang.end_of_node(self, returncode)
            if ends is None:
                return  # another node's, or the attempt was lost with a node
            outcome = with_rank_errors(outcome, ends.first_error)
            if self.stop_reason is None:
                self.stop_reason = ends.stop_reason
        elif self.ranks > 1:
            outcome = with_rank_errors(outcome, first_rank_error(self.job_dir, self.attempt))
        ended = verdict(
            outcome,
            stop_reason=self.stop_reason,
            returncode=returncode,
            max_runtime_seconds=self.max_runtime_seconds,
            log_tail=lambda: tail(log_path, 60)[0].decode(errors="replace"),
        )
        if self.store is not None:
            problem = self.store.after_child(log_path)
            if problem is not None and ended.status is not None:
                log.error("job %s: %s", self.job_id, problem)
                ended = Verdict(JobStatus.FAILED, ended.result, ended.error or store_error(problem))
            self.store.ended(terminal=ended.status is not None)
        attempt = (self.settings, self.job_id, self.attempt, self.job_dir)
        if self.overrun is not None:  # over its memory or disk budget, whatever it reported
            attempt_end.write_terminal(
                *attempt, JobStatus.FAILED, ended.result, budget.error(self.overrun)
            )
        elif ended.status is None:
            attempt_end.release(*attempt, ended.result)
        else:
            attempt_end.write_terminal(*attempt, ended.status, ended.result, ended.error)


def _cold_child_set_up() -> Callable[[], None]:
    """What a cold child does between fork and exec: die with this process, and start
    with SIGUSR1 blocked. A stop can come milliseconds after the start (worker/control.py),
    while the new Python has no handler yet and SIGUSR1's default action would kill it; it
    stays pending until the runner has its handler and unblocks it (worker/runner.py)."""
    dying = lifetime.dying_with_this_process()

    def set_up() -> None:
        dying()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

    return set_up


def _now() -> str:
    return datetime.now(UTC).isoformat()
