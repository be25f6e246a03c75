"""Submit to first logged step, warm start against cold (run by hand, not in CI).

One stack (API, Postgres, Redis) with three workers side by side: one warm (its training
children are forked from prepared processes of its template, worker/warm.py) on queue
`default`; one warm with the setting of `--before` on queue `bench-before` (by default
`TRAINDEPOT_FLUSH_LEADING_EDGE=false`: the flusher holds the first point until its interval
ends, as before issue 22; `TRAINDEPOT_GC_FREEZE=false`: the child's collector walks every
object of its imports when `train()` starts, as before); one cold
(`TRAINDEPOT_WARM_START=false`: a fresh Python per child) on queue `bench-cold`. Rounds are
interleaved (warm job, warm job with `--before`, cold job, cold import) so that
load from elsewhere hits all alike:
- visible: from the client's clock just before `POST /jobs` to the first `GET /jobs/{id}`
  (polled every 10 ms) whose progress shows a step, what a user polling the API sees;
- latency: from the same submit to the `recorded_at` of the job's first logged step (the
  training child's clock when `on_log` fired; same machine);
- end: from the same submit to the job's `finished_at` (the terminal status written);
- import: a fresh `python -c "from worker.zygote import prepare; prepare()"`, the imports a
  cold child pays before it can build anything: the reference.

A job runs 100 steps (over a second, longer than the flusher's interval): a job that ends
sooner has its first step written by the flusher's last flush, whatever the leading edge.

    python -m bench.warm_start --repeats 7
    python -m bench.warm_start --repeats 9 --no-cold  # the leading edge on and off only
    python -m bench.warm_start --repeats 9 --no-cold --before TRAINDEPOT_GC_FREEZE=false

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

from bench.service import offline_env, spread, wait_for_end

COLD_QUEUE = "bench-cold"
BEFORE_QUEUE = "bench-before"
VISIBLE_POLL_SECONDS = 0.01

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
    "training_args": {"max_steps": 100, "per_device_train_batch_size": 4, "logging_steps": 1,
                      "save_strategy": "no", "use_cpu": True, "dataloader_num_workers": 0},
}  # fmt: skip


def run_job(client: httpx.Client, database_url: str, queue: str) -> tuple[float, float, float]:
    """Seconds from submit to the first logged step visible over the API, to its
    `recorded_at`, and to the end."""
    submitted = time.time()
    job: dict[str, Any] = (
        client.post("/jobs", json={**SPEC, "queue": queue}).raise_for_status().json()
    )
    deadline = time.monotonic() + 120
    while not (job.get("progress") or {}).get("global_step"):
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job['id']} {job['status']} without a visible step")
        time.sleep(VISIBLE_POLL_SECONDS)
        job = client.get(f"/jobs/{job['id']}").raise_for_status().json()
    visible = time.time() - submitted
    job = wait_for_end(client, job["id"])
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT min(recorded_at), (SELECT finished_at FROM jobs WHERE id = %s)"
            " FROM job_metrics WHERE job_id = %s AND kind = 'train'",
            (uuid.UUID(job["id"]), uuid.UUID(job["id"])),
        ).fetchone()
    assert row is not None and row[0] is not None
    expected = "cold" if queue == COLD_QUEUE else "warm"
    if [a["start"] for a in job["attempts"]] != [expected]:
        raise RuntimeError(f"job {job['id']} started {job['attempts']}, expected {expected}")
    return visible, row[0].timestamp() - submitted, row[1].timestamp() - submitted


def cold_import(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from worker.zygote import prepare; prepare()"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - started


def extra_worker(log_path: Path, queue: str, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker of its own on `queue`, with `settings` over the stack's environment."""
    from traindepot.stack import start_command

    return start_command(["worker", "--queues", queue], {**os.environ, **settings}, log_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-cold", action="store_true", help="the warm workers only (no cold worker, no import)"
    )
    parser.add_argument(
        "--before",
        default="TRAINDEPOT_FLUSH_LEADING_EDGE=false",
        metavar="NAME=VALUE",
        help="the setting of the second warm worker, what the first is compared with",
    )
    args = parser.parse_args(argv)
    before_name, _, before_value = args.before.partition("=")
    before_way = f"warm, {before_name}={before_value}"

    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    env = offline_env(work, TRAINDEPOT_QUEUES=f"default,{COLD_QUEUE},{BEFORE_QUEUE}")
    os.environ.update(env)  # the stack (API, warm worker) reads the same

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack, stop_process

    ways = {"warm": "default", before_way: BEFORE_QUEUE, "cold": COLD_QUEUE}
    if args.no_cold:
        del ways["cold"]
    results: dict[str, dict[str, list[float]]] = {
        way: {"visible": [], "recorded": [], "end": []} for way in ways
    }
    imports: list[float] = []
    with running_stack(host="127.0.0.1", port=free_port()) as stack:
        extra = [
            extra_worker(
                work / "before-worker.log",
                BEFORE_QUEUE,
                {before_name: before_value},
            )
        ]
        if not args.no_cold:
            extra.append(
                extra_worker(
                    work / "cold-worker.log", COLD_QUEUE, {"TRAINDEPOT_WARM_START": "false"}
                )
            )
        try:
            with httpx.Client(
                base_url=stack.url,
                timeout=30,
                headers={"Authorization": f"Bearer {stack.admin_key}"},
            ) as client:
                # One of each not counted: page cache, the workers' first connections.
                for queue in ways.values():
                    run_job(client, stack.database_url, queue)
                for round_ in range(1, args.repeats + 1):
                    for way, queue in ways.items():
                        visible, recorded, ended = run_job(client, stack.database_url, queue)
                        results[way]["visible"].append(visible)
                        results[way]["recorded"].append(recorded)
                        results[way]["end"].append(ended)
                    if not args.no_cold:
                        imports.append(cold_import(env))
                    print(
                        f"round {round_}/{args.repeats}: "
                        + ", ".join(f"{way} {results[way]['visible'][-1]:.3f} s" for way in ways)
                        + (f", import {imports[-1]:.2f} s" if imports else ""),
                        flush=True,
                    )
        finally:
            for proc in extra:
                stop_process(proc)
    print(f"\nload: {os.getloadavg()}")
    print()
    print(
        "| worker | submit to first step visible over the API, median (min-max)"
        " | submit to its recorded_at | its recorded_at to visible | submit to end |"
    )
    print("|---|---|---|---|---|")

    def secs(values: list[float]) -> str:
        return spread(values, "{:.3f}", " s")

    for way in ways:
        got = results[way]
        held = [v - r for v, r in zip(got["visible"], got["recorded"], strict=True)]
        print(
            f"| {way} | {secs(got['visible'])} | {secs(got['recorded'])} | {secs(held)}"
            f" | {secs(got['end'])} |"
        )
    if imports:
        print(f"| cold import alone (reference) | | {secs(imports)} | | |")

    def ratio(a: str, b: str, measure: str) -> float:
        return statistics.median(results[a][measure]) / statistics.median(results[b][measure])

    for a, b in (("warm", before_way), ("warm", "cold")):
        if b not in ways:
            continue
        print(
            f"| **{a} / {b}** | **{ratio(a, b, 'visible'):.3f}**"
            f" | {ratio(a, b, 'recorded'):.3f} | | {ratio(a, b, 'end'):.3f} |"
        )
    print(f"\nall runs: {results}\nimport {imports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
