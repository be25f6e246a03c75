"""Submit to first logged step, warm start against cold (run by hand, not in CI).

One stack (API, Postgres, Redis) with two workers side by side: one warm (its training
children are forked from prepared processes of its template, worker/warm.py) on queue
`default`, one cold (`TRAINDEPOT_WARM_START=false`: a fresh Python per child) on queue
`bench-cold`. Rounds are
interleaved (warm job, cold job, cold import) so that load from elsewhere hits all alike:
- latency: from the client's clock just before `POST /jobs` to the `recorded_at` of the
  job's first logged step (the training child's clock when `on_log` fired; same machine);
- end: from the same submit to the job's `finished_at` (the terminal status written);
- import: a fresh `python -c "from worker.zygote import prepare; prepare()"`, the imports a
  cold child pays before it can build anything: the reference.

    python -m bench.warm_start --repeats 5

Postgres: TRAINDEPOT_DATABASE_URL if set, else an embedded server; Redis: embedded unless
TRAINDEPOT_REDIS_URL is set. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.service import spread, submit_and_wait

COLD_QUEUE = "bench-cold"

SPEC: dict[str, Any] = {
    "name": "warm-start-bench",
    "task": "causal-lm",
    "model": {
        "from_config": {
            "model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64,
        }
    },
    "tokenizer": {"builtin": "byte-level"},
    "dataset": {"rows": [{"text": f"line {i} of the benchmark's text"} for i in range(32)],
                "text_column": "text"},
    "preprocessing": {"max_length": 32},
    "training_args": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1,
                      "save_strategy": "no", "use_cpu": True, "dataloader_num_workers": 0},
}  # fmt: skip


def run_job(client: httpx.Client, database_url: str, queue: str) -> tuple[float, float]:
    """(seconds from submit to the first logged step, seconds from submit to the end)."""
    submitted = time.time()
    job = submit_and_wait(client, {**SPEC, "queue": queue})
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT min(recorded_at), (SELECT finished_at FROM jobs WHERE id = %s)"
            " FROM job_metrics WHERE job_id = %s AND kind = 'train'",
            (uuid.UUID(job["id"]), uuid.UUID(job["id"])),
        ).fetchone()
    assert row is not None and row[0] is not None
    expected = "warm" if queue == "default" else "cold"
    if [a["start"] for a in job["attempts"]] != [expected]:
        raise RuntimeError(f"job {job['id']} started {job['attempts']}, expected {expected}")
    return row[0].timestamp() - submitted, row[1].timestamp() - submitted


def cold_import(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from worker.zygote import prepare; prepare()"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRAINDEPOT_HOME": str(work / "home"),
        "TRAINDEPOT_QUEUES": f"default,{COLD_QUEUE}",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)  # the stack (API, warm worker) reads the same

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack, stop_process

    results: dict[str, list[float]] = {"warm": [], "cold": [], "warm_end": [], "cold_end": []}
    imports: list[float] = []
    with running_stack(host="127.0.0.1", port=free_port()) as stack:
        cold_log = (work / "cold-worker.log").open("ab")
        cold_worker = subprocess.Popen(
            [sys.executable, "-m", "traindepot.cli", "worker", "--queues", COLD_QUEUE],
            env={**os.environ, "TRAINDEPOT_WARM_START": "false"},
            stdout=cold_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(
                base_url=stack.url,
                timeout=30,
                headers={"Authorization": f"Bearer {stack.admin_key}"},
            ) as client:
                # One of each not counted: page cache, the workers' first connections.
                run_job(client, stack.database_url, "default")
                run_job(client, stack.database_url, COLD_QUEUE)
                for round_ in range(1, args.repeats + 1):
                    first, end = run_job(client, stack.database_url, "default")
                    results["warm"].append(first)
                    results["warm_end"].append(end)
                    first, end = run_job(client, stack.database_url, COLD_QUEUE)
                    results["cold"].append(first)
                    results["cold_end"].append(end)
                    imports.append(cold_import(env))
                    print(
                        f"round {round_}/{args.repeats}: warm {results['warm'][-1]:.2f} s,"
                        f" cold {results['cold'][-1]:.2f} s, import {imports[-1]:.2f} s",
                        flush=True,
                    )
        finally:
            stop_process(cold_worker)
    warm, cold = statistics.median(results["warm"]), statistics.median(results["cold"])
    print()
    print("| | submit to first logged step, median (min-max) | submit to end |")
    print("|---|---|---|")

    def secs(values: list[float]) -> str:
        return spread(values, "{:.2f}", " s")

    print(f"| warm start | {secs(results['warm'])} | {secs(results['warm_end'])} |")
    print(f"| cold start | {secs(results['cold'])} | {secs(results['cold_end'])} |")
    print(f"| cold import alone (reference) | {secs(imports)} | |")
    print(f"| **warm / cold** | **{warm / cold:.3f}** | |")
    print(f"\nall runs: warm {results['warm']}\ncold {results['cold']}\nimport {imports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
