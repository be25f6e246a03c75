"""Ingestion: concurrent training children logging every step into PostgreSQL (run by hand,
not in CI).

`--children` processes, each standing in for a job's training child: a job row of its own
(running, attempt 1), the project's own `Flusher` (worker/flusher.py: its thread, its
upsert, its progress write, its Redis publish) and `TraindepotCallback`
(worker/callback.py), driven as `Trainer` drives them: `on_train_begin`, then per step
`on_step_end` and `on_log` with a training log (loss, grad_norm, learning_rate, epoch). A
step's own work is a sleep of `--step-ms` (a step whose time is spent on the device, as on
a GPU: the CPU is free meanwhile). The children are forked after the imports, start
together (a barrier) and run for `--seconds`.

Three phases, interleaved by round: `bare`, the same loops without the callback (nothing
reported), `reporting`, and `edge-off`: reporting with the flusher's leading edge off
(`leading_edge=False`, a point after an idle interval waits for the interval's end, as
before issue 22), to show that the leading edge leaves a stream's batching as it was. Per
child: wall time per step, and in both reporting phases the time the two hooks took on the
training thread per step and the flusher thread's CPU time. Rates:
points committed by the flushers while the loops ran, over the loops' span (sustained), and
after the final flush every point must be in `job_metrics` (none lost, none doubled).

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/td_perf_ingest \\
        python -m bench.ingest --children 20 --seconds 20 --rounds 2

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg

from bench.service import spread
from traindepot.embedded import EmbeddedRedis
from traindepot.stack import migrate

# (name, reporting, the flusher's leading edge)
PHASES = (("bare", False, True), ("reporting", True, True), ("edge-off", True, False))

# Built once in the parent before the children fork (TrainingArguments imports torch).
_TRAINING_ARGS: list[Any] = []


def _child(
    reporting: bool,
    leading_edge: bool,
    database_url: str,
    redis_url: str,
    job_id: uuid.UUID,
    seconds: float,
    step_s: float,
    start: Barrier,
    results: Any,
    _output_dir: str,
) -> None:
    from transformers import TrainerControl, TrainerState

    from worker.callback import TraindepotCallback
    from worker.flusher import Flusher

    args = _TRAINING_ARGS[0]
    state = TrainerState()
    state.train_batch_size = 8
    state.max_steps = 1_000_000
    control = TrainerControl()
    flusher = callback = None
    if reporting:
        flusher = Flusher(
            job_id=job_id,
            attempt=1,
            redis_url=redis_url,
            database_url=database_url,
            leading_edge=leading_edge,
        )
        callback = TraindepotCallback(flusher)
        callback.on_train_begin(args, state, control)
    hooks = 0.0
    step = 0
    start.wait()
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        time.sleep(step_s)  # the step's work, on the device
        step += 1
        state.global_step = step
        state.epoch = step / 1000
        logs = {
            "loss": 3.0 - step * 1e-5,
            "grad_norm": 1.0 + (step % 7) / 10,
            "learning_rate": 5e-5,
            "epoch": state.epoch,
        }
        if callback is not None:
            t0 = time.perf_counter()
            callback.on_step_end(args, state, control)
            callback.on_log(args, state, control, logs=logs)
            hooks += time.perf_counter() - t0
    ended = time.perf_counter()
    stored_at_end = flusher.stored_points if flusher else 0
    if flusher is not None:
        flusher.close()
    results.put(
        {
            "job_id": str(job_id),
            "steps": step,
            "began": began + time.time() - time.perf_counter(),
            "ended": ended + time.time() - time.perf_counter(),
            "ms_per_step": (ended - began) * 1000 / step,
            "hook_us_per_step": hooks * 1e6 / step,
            "stored_at_end": stored_at_end,
            "stored": flusher.stored_points if flusher else 0,
            "flusher_cpu_s": flusher.cpu_seconds if flusher else 0.0,
            "drained_s": time.perf_counter() - ended,
        }
    )


def run_phase(
    reporting: bool,
    leading_edge: bool,
    database_url: str,
    redis_url: str,
    args: argparse.Namespace,
    tmp: Path,
) -> list[dict[str, Any]]:
    ctx = mp.get_context("fork")
    jobs = [uuid.uuid4() for _ in range(args.children)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        for job_id in jobs:
            conn.execute(
                "INSERT INTO jobs (id, name, status, spec, queue, priority, attempt,"
                " max_restarts) VALUES (%s, 'bench-ingest', 'running', '{}', 'default', 5, 1, 3)",
                (job_id,),
            )
    start = ctx.Barrier(args.children)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child,
            args=(
                reporting,
                leading_edge,
                database_url,
                redis_url,
                job_id,
                args.seconds,
                args.step_ms / 1000,
                start,
                results,
                str(tmp / "out"),
            ),
        )
        for job_id in jobs
    ]
    for proc in procs:
        proc.start()
    rows = [results.get(timeout=args.seconds + 600) for _ in procs]
    for proc in procs:
        proc.join()
    if reporting:
        with psycopg.connect(database_url) as conn:
            counts: dict[str, int] = dict(
                conn.execute(
                    "SELECT job_id::text, count(*) FROM job_metrics WHERE job_id = ANY(%s)"
                    " GROUP BY job_id",
                    (jobs,),
                ).fetchall()
            )
        for row in rows:
            assert counts.get(row["job_id"], 0) == row["steps"] == row["stored"], (row, counts)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--children", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--step-ms", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database_url = os.environ["TRAINDEPOT_DATABASE_URL"]
    import worker.callback  # noqa: F401  (imported once, before the children fork)

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        from transformers import TrainingArguments

        _TRAINING_ARGS.append(
            TrainingArguments(
                output_dir=str(tmp / "out"), use_cpu=True, per_device_train_batch_size=8,
                report_to=[],
            )
        )  # fmt: skip
        redis_server = EmbeddedRedis(tmp / "redis")
        try:
            migrate({**os.environ, "TRAINDEPOT_HOME": str(tmp)})
            for round_ in range(args.rounds):
                for name, reporting, edge in PHASES:
                    rows = run_phase(reporting, edge, database_url, redis_server.url, args, tmp)
                    span = max(r["ended"] for r in rows) - min(r["began"] for r in rows)
                    line = (
                        f"round {round_ + 1} {name:9} children {len(rows)}"
                        f" | ms/step {spread([r['ms_per_step'] for r in rows])}"
                        f" | steps {sum(r['steps'] for r in rows):,} in {span:.1f} s"
                    )
                    if reporting:
                        cpu = [r["flusher_cpu_s"] / args.seconds for r in rows]
                        hooks = [r["hook_us_per_step"] for r in rows]
                        during = sum(r["stored_at_end"] for r in rows) / span
                        stored = sum(r["stored"] for r in rows)
                        drained = max(r["drained_s"] for r in rows)
                        line += (
                            f" | hooks us/step {spread(hooks, '{:.1f}')}"
                            f" | committed while running {during:,.0f} points/s"
                            f" | all {stored:,} stored, last drained {drained:.2f} s after"
                            f" | flusher CPU share {spread(cpu)}"
                        )
                    print(line, flush=True)
        finally:
            redis_server.stop()


if __name__ == "__main__":
    main()
