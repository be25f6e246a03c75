"""What a sweep's trial costs before its first step, with the prepared-data cache on and off
(run by hand, not in CI; docs/benchmarks.md).

One stack (API, Postgres, Redis) and two workers of one CPU slot side by side: one with the
cache (`TRAINDEPOT_DATASET_CACHE_MIB` 2048) on queue `default`, one without (0) on queue
`bench-nocache`. The two sweeps run at the same time, one per worker, so that load from
elsewhere hits both alike: 6 trials each, one at a time, over the learning rate, 3 steps a
trial, on data that takes seconds to prepare, numbered paragraphs of
traindepot/data/alice.txt (256 tokens each, the byte-level tokenizer), given two ways:

- a JSON-lines file of 40,000 lines: `datasets` caches the Arrow conversion and each `map`
  of a file-backed dataset itself (by fingerprint, under its own cache directory), so trials
  2..6 are quick even without this cache;
- 10,000 inline rows (`dataset.rows`, the server's most): an in-memory dataset, whose maps
  `datasets` does not cache.

Measured per trial: from the claim (`started_at`, the attempt's start) to its first logged
step (`recorded_at` of the step-1 point): what the trial spends building its tokenizer,
data and model before it trains. Reported: trial 1 (which prepares the data in both) against
the median of trials 2..6, cache on and off, for each kind of data.

    python -m bench.sweep_cache
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.service import offline_env

NOCACHE_QUEUE = "bench-nocache"
TRIALS = 6


ROWS = 10_000  # the server's most inline rows


def rows(count: int) -> list[dict[str, str]]:
    """Numbered paragraphs of traindepot/data/alice.txt."""
    text = files("traindepot").joinpath("data/alice.txt").read_text().splitlines()
    paragraphs = [line for line in text if line.strip()]
    return [{"text": f"{n}: {paragraphs[n % len(paragraphs)]}"} for n in range(count)]


def write_data(path: Path, lines: int = 40_000) -> None:
    with path.open("w") as out:
        for row in rows(lines):
            out.write(json.dumps(row) + "\n")


def sweep(name: str, dataset: dict[str, Any], queue: str) -> dict[str, Any]:
    return {
        "name": name,
        "base": {
            "name": name,
            "queue": queue,
            "model": {
                "from_config": {
                    "model_type": "gpt2",
                    "n_layer": 1,
                    "n_head": 2,
                    "n_embd": 32,
                    "n_positions": 256,
                }
            },
            "tokenizer": {"builtin": "byte-level"},
            "dataset": {**dataset, "eval_fraction": 0.002},
            "preprocessing": {"max_length": 256},
            "training_args": {
                "max_steps": 3,
                "per_device_train_batch_size": 2,
                "per_device_eval_batch_size": 2,
                "eval_strategy": "steps",
                "eval_steps": 3,
                "logging_steps": 1,
                "save_strategy": "no",
                "use_cpu": True,
                "seed": 0,
            },
        },
        "search_space": {
            "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
        },
        "sampler": "random",
        "max_trials": TRIALS,
        "max_concurrent_trials": 1,
    }


def first_steps(database_url: str, sweep_id: str) -> list[float]:
    """Seconds from each trial's claim to its first logged step, in trial order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM (SELECT min(m.recorded_at) FROM job_metrics m"
            " WHERE m.job_id = j.id AND m.kind = 'train') - j.started_at)"
            " FROM jobs j WHERE j.sweep_id = %s ORDER BY j.trial_number",
            (sweep_id,),
        ).fetchall()
    return [float(r[0]) for r in rows]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    data = work / "alice.jsonl"
    env = offline_env(
        work,
        TRAINDEPOT_ALLOWED_PATHS=str(work),
        TRAINDEPOT_QUEUES=f"default,{NOCACHE_QUEUE}",
    )
    os.environ.update(env)
    write_data(data)

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack, start_command, stop_process

    with running_stack(host="127.0.0.1", port=free_port()) as stack:
        nocache: subprocess.Popen[bytes] = start_command(
            ["worker", "--queues", NOCACHE_QUEUE],
            {**os.environ, "TRAINDEPOT_DATASET_CACHE_MIB": "0"},
            work / "nocache-worker.log",
        )
        try:
            with httpx.Client(
                base_url=stack.url,
                timeout=60,
                headers={"Authorization": f"Bearer {stack.admin_key}"},
            ) as client:
                print("| data | cache | trial 1 | trials 2..6 (median, min-max) | 2..6 / 1 |")
                print("|---|---|---|---|---|")
                for kind, dataset in (
                    ("a JSON-lines file", {"files": {"train": str(data)}}),
                    ("inline rows", {"rows": rows(ROWS)}),
                ):
                    ids = {
                        "on": client.post("/sweeps", json=sweep("on", dataset, "default")),
                        "off": client.post("/sweeps", json=sweep("off", dataset, NOCACHE_QUEUE)),
                    }
                    sweeps = {way: r.raise_for_status().json()["id"] for way, r in ids.items()}
                    for sweep_id in sweeps.values():
                        while client.get(f"/sweeps/{sweep_id}").json()["status"] != "succeeded":
                            time.sleep(1)
                    for way, sweep_id in sweeps.items():
                        times = first_steps(stack.database_url, sweep_id)
                        rest = times[1:]
                        print(
                            f"| {kind} | {way} | {times[0]:.2f} s | {statistics.median(rest):.2f} s"
                            f" ({min(rest):.2f}-{max(rest):.2f}) |"
                            f" {statistics.median(rest) / times[0]:.3f} |",
                            flush=True,
                        )
                        print(f"<!-- {kind}, cache {way}: {times} -->", flush=True)
        finally:
            stop_process(nocache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
