"""The training child: one process per attempt (`python -m worker.runner JOB_ID ATTEMPT`).

A fresh process per job gives a fresh CUDA context, frees all GPU memory at exit, and can be
killed without harming the worker. It builds everything from the spec, runs
`Trainer.train()`, flushes every event, and writes its outcome (the TrainOutput or the error)
to a file (worker/outcome.py) that the supervisor (worker/supervisor.py) turns into the job's
terminal status.

SIGUSR1 asks for a cooperative stop (cancel, time limit): training stops at the next step
boundary and saves a checkpoint there.

A job of several ranks runs this same module once per rank, started by torch's launcher
(worker/launcher.py, worker/ranks.py): rank 0 alone reports (points, progress, the outcome
file); a rank that raises writes its own error file, which the supervisor reads; the stop is
a file in the job's directory, agreed on by all ranks at each step.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from db import attempts, jobs
from db.retry import TRANSIENT, retry_db
from db.session import session_scope
from traindepot.settings import Settings, get_settings
from traindepot.spec import JobSpec
from worker import ranks
from worker.errors import NonFiniteLossError, Reason, describe
from worker.outcome import outcome_path, write_outcome, write_rank_error

if TYPE_CHECKING:
    from worker.callback import PointSink
    from worker.flusher import Flusher
    from worker.hub import HubPusher

log = logging.getLogger("traindepot.runner")


def train_output_dict(output: Any) -> dict[str, Any]:
    """`TrainOutput` exactly as `train()` returned it: its three fields."""
    return {
        "global_step": int(output.global_step),
        "training_loss": float(output.training_loss),
        "metrics": dict(output.metrics),
    }


# SIGUSR1 asks for a cooperative stop. Its default action kills the process, so the handler
# is installed first thing, before the slow imports: a cancel that arrives while torch loads
# is kept and honoured at the first step boundary.
stop_requested = threading.Event()


def _request_stop(signum: int, frame: FrameType | None) -> None:
    stop_requested.set()


@retry_db(give_up_after_seconds=120)
def _load_spec(job_id: uuid.UUID, attempt: int) -> JobSpec | None:
    """The spec, or None if `attempt` no longer owns the job. Retried through a short
    database outage (the supervisor kills this process if the outage outlasts the lease)."""
    with session_scope() as session:
        job = jobs.get(session=session, job_id=job_id)
        if job is None or job.attempt != attempt:
            return None
        return JobSpec.model_validate(job.spec)


def _record_resume(job_id: uuid.UUID, attempt: int, checkpoint: Path | None) -> None:
    """Best effort, for the attempt history: the step this attempt resumes from."""
    step = None if checkpoint is None else int(checkpoint.name.rsplit("-", 1)[1])
    try:
        with session_scope() as session:
            attempts.record_resume(session=session, job_id=job_id, attempt=attempt, step=step)
    except TRANSIENT as exc:
        log.warning("attempt %s: resume step not recorded (%s)", attempt, exc)


def new_flusher(*, settings: Settings, job_id: uuid.UUID, attempt: int) -> Flusher:
    """The attempt's flusher, configured from the settings: it writes every
    `flush_interval_seconds`, and at once when `flush_queue_size` points are waiting."""
    from worker.flusher import Flusher

    return Flusher(
        job_id=job_id,
        attempt=attempt,
        redis_url=settings.require_redis_url(),
        interval=settings.flush_interval_seconds,
        high_water=settings.flush_queue_size,
        leading_edge=settings.flush_leading_edge,
        log_stream=sys.stdout,  # the job's training log (the supervisor's file)
    )


def run(job_id: uuid.UUID, attempt: int) -> dict[str, Any]:
    signal.signal(signal.SIGUSR1, _request_stop)
    # A cold child starts with it blocked (worker/supervisor.py): a stop sent before this
    # handler existed is pending, and is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    rank = ranks.current()
    settings = get_settings()
    spec = _load_spec(job_id, attempt)
    if spec is None:
        return {"status": "fenced"}

    job_dir = settings.job_dir(job_id)
    stop: threading.Event = stop_requested
    if rank.several:
        stop = ranks.StopFlag(ranks.stop_path(job_dir, attempt), signalled=stop_requested)
    # Node k > 0 of a job of several nodes writes its ranks' RNG states beside the job's
    # files (rank 0 gathers them into node 0's checkpoints too); every node resumes from
    # the job's own checkpoints (worker/ranks.py).
    output_dir = ranks.node_output(job_dir, rank.node)
    output_dir.mkdir(parents=True, exist_ok=True)

    # Heavy imports only here, in the child.
    import datasets
    from transformers.utils import logging as transformers_logging

    from traindepot.gc_freeze import freeze_imports
    from worker import builders, checkpoints, data_cache, pruning
    from worker.callback import GatherRngStates, HandoffCallback, TraindepotCallback

    freeze_imports()  # a cold child's imports too (a warm one's template froze its own)

    # Bars are noise in the job's log file (and their carriage returns split its lines):
    # datasets' maps, and transformers' own (saving the model writes one per shard).
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    flusher: PointSink = (
        new_flusher(settings=settings, job_id=job_id, attempt=attempt)
        if rank.reports
        else ranks.SilentSink()
    )
    callback = TraindepotCallback(flusher, agree=ranks.agree if rank.several else None)
    callback.stop_requested = stop  # the event the SIGUSR1 handler (or the stop file) sets
    # A trial of a sweep that prunes reports each evaluation (a single-process trial: the
    # ranks of a multi-rank one would have to agree on the stop; they run unpruned).
    trial = pruning.for_job(job_id) if not rank.several else None
    callbacks: list[Any] = [callback] if trial is None else [callback, trial]
    if rank.node_count > 1:  # node 0's checkpoints hold every node's RNG states
        callbacks.append(GatherRngStates())
    if settings.artifacts_url:  # checkpoints go on to the store (worker/uploads.py)
        callbacks.append(HandoffCallback(job_dir, rank.on_node))
    hub: HubPusher | None = None
    if spec.hub is not None and rank.reports:  # worker/hub.py
        from worker.hub import HubPusher

        hub = HubPusher(spec.hub, flusher, job_dir)
        callbacks.append(hub)

    phase: Reason = "config"

    def entering(part: Reason) -> None:
        nonlocal phase
        phase = part

    try:
        trainer = builders.build_trainer(
            spec,
            output_dir,
            callbacks=callbacks,
            on_phase=entering,
            prepare=data_cache.for_job(job_id, settings),
        )
        if rank.several:  # the Trainer's arguments joined the process group
            import torch.distributed as dist

            log.info(
                "rank %s of %s: %s process group, device %s",
                rank.index,
                rank.size,
                dist.get_backend(),
                trainer.args.device,
            )
            if trainer.args.fsdp and not trainer.is_fsdp_enabled:
                log.warning(
                    "FSDP asked, but accelerate shards on accelerators only: these CPU ranks"
                    " train with DDP (each holds the whole model)"
                )
        last_complete = checkpoints.complete_for(rank.on_node)
        if rank.node_count > 1:
            # Every node resumes from the same step: the newest one whole on all of them.
            last_complete = ranks.common_to_all(rank.on_node)
        job_output = ranks.node_output(job_dir, 0)
        resume_from = resume_checkpoint(spec, attempt, job_output, last_complete)
        if resume_from is not None and resume_from.parent == job_output and rank.reports:
            _record_resume(job_id, attempt, resume_from)
        phase = "internal"
        log.info("attempt %s: training (resume from %s)", attempt, resume_from)
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        result = train_output_dict(output)
        if callback.non_finite_step is not None:
            raise NonFiniteLossError(callback.non_finite_step, callback.non_finite_values)
        stopped = callback.stop_requested.is_set()
        pruned = trial is not None and trial.pruned_at is not None
        if result["global_step"] >= 1 and not pruned:
            # The job's product (worker/export.py): a job that trained a step has a model,
            # cancelled ones included. A model that cannot be written fails the job.
            from worker.export import save_final_model

            model = save_final_model(trainer, spec, job_dir, str(job_id), attempt, result)
            if hub is not None:  # a failed push is recorded, never raised
                hub.finish(model)
        outcome: dict[str, Any] = {
            "status": "stopped" if stopped or pruned else "succeeded",
            "result": result,
        }
        if pruned and trial is not None:
            # Saves nothing more: no checkpoint at the pruning step, no model.
            outcome["error"] = trial.error()
    except BaseException as exc:
        log.exception("attempt %s failed", attempt)
        outcome = {"status": "failed", "error": describe(exc, phase_reason=phase)}
        if rank.several:
            # Written at once, before anything else can fail: the supervisor takes the
            # earliest rank error as the job's (the others' are usually its echo).
            outcome["error"]["rank"] = rank.index
            if rank.node_count > 1:  # which node, and which of its ranks
                outcome["error"]["node"] = rank.node
                outcome["error"]["local_rank"] = int(os.environ.get("LOCAL_RANK", "0"))
                outcome["error"]["message"] = (
                    f"node {rank.node}, rank {rank.index}: {outcome['error'].get('message', '')}"
                )
            write_rank_error(job_dir, attempt, rank.index, outcome["error"])
    finally:
        if not flusher.close():
            log.error("flusher could not write every event before exit")
    if flusher.fenced:
        return {"status": "fenced"}
    if rank.reports:
        write_outcome(outcome_path(job_dir, attempt), outcome)
    return outcome


def resume_checkpoint(
    spec: JobSpec, attempt: int, output_dir: Path, last_complete: Any
) -> Path | None:
    """A restarted attempt continues from this job's last whole checkpoint;
    `resume_from_checkpoint: true` asks for the same on the first attempt, and a job id
    continues from that job's last whole checkpoint."""
    own: Path | None = last_complete(output_dir)
    if own is not None and (attempt > 1 or spec.resume_from_checkpoint is True):
        return own
    if isinstance(spec.resume_from_checkpoint, uuid.UUID):
        other: Path | None = last_complete(
            get_settings().job_dir(spec.resume_from_checkpoint) / "output"
        )
        if other is None:
            from worker.errors import ConfigError

            raise ConfigError(
                f"job {spec.resume_from_checkpoint} has no complete checkpoint to resume from"
            )
        return other
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rank = ranks.current()
    if rank.several:
        ranks.die_with_launcher()  # first: a worker killed from now on takes this rank along
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        # Several ranks share the job's log: each line says whose it is.
        format=f"%(asctime)s {f'[rank {rank.index}] ' if rank.several else ''}"
        "%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    outcome = run(uuid.UUID(args[0]), int(args[1]))
    return 0 if outcome.get("status") in ("succeeded", "stopped", "fenced") else 1


def exit_now(code: int) -> NoReturn:
    """End the training process without tearing down the interpreter: the threads it
    started are joined, the atexit handlers run and the streams are flushed, as at a normal
    exit, but the seconds that finalizing every module of torch, transformers and datasets
    takes (and, in a forked child, the copying of every page it touches) are skipped, as
    `multiprocessing` does for its children. The supervisor waits for this exit to write
    the job's terminal status, so those seconds were the job's."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
