"""Sweeps through the service (run by hand, not in CI): TPE against a grid with the same
budget, and the median pruner against none (docs/benchmarks.md).

One stack (API, Postgres, Redis, the webhook sender) and one worker of 2 CPU slots; every
sweep runs `max_concurrent_trials` 2 on it, each trial a tiny GPT-2 from a config with the
byte-level tokenizer on the paragraphs of traindepot/data/alice.txt (a public-domain book),
grouped in blocks of 64 tokens, a fifth held out, evaluated every 10 steps, 40 steps:

- **TPE against a grid**: 12 trials each over the learning rate (log, 1e-4 to 3e-2) and the
  warmup (0 to 20 steps); the grid is 4 log-spaced learning rates x 3 warmups = 12 points.
  The objective is the best `eval_loss`; reported: both tables and TPE's best over the
  grid's best.
- **Pruning**: the same TPE sweep (same seed) with the median pruner and without; reported:
  the total training steps of each, their best objective, and for each pruned trial the
  evaluations it ran after the pruner's decision (its `global_step` against the step of the
  decision).

    python -m bench.sweeps

Postgres: TRAINDEPOT_DATABASE_URL if set, else an embedded server; Redis: embedded unless
TRAINDEPOT_REDIS_URL is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx

from bench.service import offline_env

QUEUE = "default"
EVAL_STEPS = 10


def base_spec() -> dict[str, Any]:
    text = files("traindepot").joinpath("data/alice.txt").read_text()
    rows = [{"text": line} for line in text.splitlines() if line.strip()]
    return {
        "name": "bench-sweep",
        "model": {
            "from_config": {
                "model_type": "gpt2",
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 64,
                "n_positions": 64,
            }
        },
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": rows, "text_column": "text", "eval_fraction": 0.2},
        "preprocessing": {"max_length": 64, "group_texts": True},
        "training_args": {
            "max_steps": 40,
            "per_device_train_batch_size": 8,
            "eval_strategy": "steps",
            "eval_steps": EVAL_STEPS,
            "logging_steps": EVAL_STEPS,
            "save_strategy": "no",
            "use_cpu": True,
            "seed": 0,
        },
    }


LEARNING_RATE = {"type": "float", "low": 1e-4, "high": 3e-2, "log": True}
WARMUP = {"type": "int", "low": 0, "high": 20}


def sweep(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base": base_spec(),
        "search_space": {
            "training_args.learning_rate": LEARNING_RATE,
            "training_args.warmup_steps": WARMUP,
        },
        "sampler": "tpe",
        "seed": 0,
        "max_trials": 12,
        "max_concurrent_trials": 2,
        **fields,
    }


def run(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    doc: dict[str, Any] = client.post("/sweeps", json=body).raise_for_status().json()
    while doc["status"] not in ("succeeded", "cancelled"):
        time.sleep(1)
        doc = client.get(f"/sweeps/{doc['id']}").raise_for_status().json()
    return doc, time.monotonic() - started


def table(client: httpx.Client, doc: dict[str, Any]) -> tuple[list[str], int]:
    """The markdown rows of a sweep's trials and its total training steps."""
    lines = [
        "| trial | learning rate | warmup | state | best eval_loss | steps |",
        "|---|---|---|---|---|---|",
    ]
    total = 0
    for trial in doc["trials"]:
        job = client.get(f"/jobs/{trial['job_id']}").raise_for_status().json()
        steps = int((job.get("result") or {}).get("global_step") or 0)
        total += steps
        value = trial["value"]
        lines.append(
            f"| {trial['number']} | {trial['params']['training_args.learning_rate']:.2e}"
            f" | {trial['params']['training_args.warmup_steps']} | {trial['state']}"
            f" | {'-' if value is None else f'{value:.4f}'} | {steps} |"
        )
    return lines, total


def late_evaluations(client: httpx.Client, doc: dict[str, Any]) -> list[int]:
    """For each pruned trial: evaluations it ran after the step the pruner decided at."""
    late = []
    for trial in doc["trials"]:
        if trial["state"] != "pruned":
            continue
        job = client.get(f"/jobs/{trial['job_id']}").raise_for_status().json()
        decided = int(job["error"]["step"])
        late.append((int(job["result"]["global_step"]) - decided) // EVAL_STEPS)
    return late


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    env = offline_env(work)
    os.environ.update(env)

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack, start_command, stop_process

    with running_stack(host="127.0.0.1", port=free_port(), worker=False) as stack:
        worker: subprocess.Popen[bytes] = start_command(
            ["worker", "--queues", QUEUE, "--slots", "2"], dict(os.environ), work / "worker.log"
        )
        try:
            with httpx.Client(
                base_url=stack.url,
                timeout=60,
                headers={"Authorization": f"Bearer {stack.admin_key}"},
            ) as client:
                results = {}
                for name, body in (
                    ("tpe", sweep("bench-tpe")),
                    (
                        "grid",
                        sweep(
                            "bench-grid",
                            sampler="grid",
                            search_space={
                                "training_args.learning_rate": {**LEARNING_RATE, "grid_points": 4},
                                "training_args.warmup_steps": {**WARMUP, "step": 10},
                            },
                        ),
                    ),
                    ("tpe, median pruner", sweep("bench-tpe-median", pruner="median")),
                ):
                    doc, seconds = run(client, body)
                    lines, total = table(client, doc)
                    results[name] = (doc, seconds, total)
                    best = doc["best"]["value"] if doc["best"] else float("nan")
                    print(f"\n### {name}: best {best:.4f}, {total} steps, {seconds:.0f} s\n")
                    print("\n".join(lines), flush=True)
                tpe, grid = results["tpe"][0]["best"]["value"], results["grid"][0]["best"]["value"]
                print(f"\nTPE best / grid best: {tpe / grid:.4f} (within 2%: {tpe <= grid * 1.02})")
                pruned = results["tpe, median pruner"]
                print(
                    f"steps with the median pruner / without: {pruned[2]} / {results['tpe'][2]}"
                    f" = {pruned[2] / results['tpe'][2]:.3f}; best with / without:"
                    f" {pruned[0]['best']['value']:.4f} / {tpe:.4f}"
                )
                print(
                    f"evaluations run after the decision, per pruned trial: "
                    f"{late_evaluations(client, pruned[0])}"
                )
        finally:
            stop_process(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
