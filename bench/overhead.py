"""What following a job live costs the training loop (run by hand, not in CI).

The same tiny-model spec, logging every step, run side by side:
  (a) bare: a plain `Trainer.train()` script (the job's model, data and TrainingArguments,
      built by the same builders, no callbacks of ours, nothing reported);
  (b) job:  the same spec submitted as a traindepot job (worker child, callback, flusher to
      Postgres and Redis);
  (c) mlflow: (a) with `report_to="mlflow"` against a local MLflow tracking server.
Each is a fresh process (the job's training child is one too). The measure is the training
loop itself: `train_runtime` from `TrainOutput.metrics` (Trainer's own clock around the
loop, every callback included). The rounds are interleaved (a, b, c, a, b, c, ...) so that
load from elsewhere hits all three alike; the table shows medians and ratios against (a).

    pip install mlflow            # only for (c); or pass --no-mlflow
    python -m bench.overhead --repeats 7 --steps 400

Where mlflow must not touch the project's environment, layer a venv over it:
    python3.11 -m venv /tmp/td-bench-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" \
        > /tmp/td-bench-venv/lib/python3.11/site-packages/dev-venv.pth
    /tmp/td-bench-venv/bin/pip install mlflow
    /tmp/td-bench-venv/bin/python -m bench.overhead

Postgres: TRAINDEPOT_DATABASE_URL if set, else an embedded server; Redis: embedded.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.service import submit_and_wait

BENCH_MODEL: dict[str, Any] = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "n_positions": 64,
}


def bench_spec(steps: int) -> dict[str, Any]:
    text = (
        Path(__file__).resolve().parent.parent / "traindepot" / "data" / "alice.txt"
    ).read_text()
    lines = [line for line in text.splitlines() if len(line) > 20][:512]
    return {
        "name": "bench-overhead",
        "task": "causal-lm",
        "model": {"from_config": dict(BENCH_MODEL)},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": [{"text": line} for line in lines], "text_column": "text"},
        "preprocessing": {"max_length": 32},
        "training_args": {
            "max_steps": steps,
            "per_device_train_batch_size": 8,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "save_strategy": "no",
            "use_cpu": True,
            "seed": 7,
            "dataloader_num_workers": 0,
        },
    }


# --- (a) and (c): the bare script, in its own process -------------------------------------------
def bare_train(spec_path: Path, out_path: Path, report_to: str) -> None:
    """What a user writes today, built from the spec by the worker's own builders."""
    from traindepot.spec import JobSpec
    from worker import builders

    spec = JobSpec.model_validate(json.loads(spec_path.read_text()))
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = builders.build_trainer(spec, Path(output_dir), report_to=report_to)
        started = time.perf_counter()
        output = trainer.train()
        wall = time.perf_counter() - started
    out_path.write_text(
        json.dumps(
            {
                "train_runtime": output.metrics["train_runtime"],
                "wall": wall,
                "steps": output.global_step,
            }
        )
    )


def run_bare(spec_path: Path, work: Path, env: dict[str, str], report_to: str = "none") -> float:
    out = work / f"bare-{report_to}-{time.monotonic_ns()}.json"
    subprocess.run(
        [sys.executable, "-m", "bench.overhead", "--bare", str(spec_path), str(out), report_to],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return float(json.loads(out.read_text())["train_runtime"])


# --- (b): as a job --------------------------------------------------------------------------------
FLUSHER_LINE = re.compile(r"flusher: (\d+) points stored.* ([0-9.]+) s of CPU")


def flusher_cpu_seconds(job_id: str) -> float:
    """The CPU time the job's flusher thread used, from the job's log (worker/flusher.py)."""
    log_path = Path(os.environ["TRAINDEPOT_HOME"]) / "jobs" / job_id / "train.log"
    match = FLUSHER_LINE.search(log_path.read_text())
    if match is None:
        raise RuntimeError(f"no flusher statistics in {log_path}")
    return float(match.group(2))


def hook_seconds_per_step(steps: int = 20_000) -> float:
    """The callback's hooks for one logged step (on_step_end + on_log with a real log dict),
    measured in this process with a real Flusher whose thread does not flush meanwhile."""
    import uuid

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.callback import TraindepotCallback
    from worker.flusher import Flusher

    flusher = Flusher(
        job_id=uuid.uuid4(), attempt=1, redis_url=os.environ["TRAINDEPOT_REDIS_URL"],
        interval=1e9, high_water=10**9,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, use_cpu=True, report_to="none")
        callback = TraindepotCallback(flusher)
        state, control = TrainerState(), TrainerControl()
        state.max_steps = steps
        callback.on_train_begin(args, state, control)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            state.global_step, state.epoch = step, step / 100
            callback.on_step_end(args, state, control)
            logs = {"loss": 3.0 + step * 1e-6, "grad_norm": 1.25, "learning_rate": 1e-3}
            callback.on_log(args, state, control, logs={**logs, "epoch": state.epoch})
        elapsed = time.perf_counter() - started
    flusher.fenced = True  # nothing of this belongs in the database
    flusher.close(timeout=5)
    return elapsed / steps


def run_job(client: httpx.Client, spec: dict[str, Any], timeout: float = 600) -> float:
    # slow polling: the bench's own API calls compete for the CPU
    job = submit_and_wait(client, spec, timeout=timeout, poll=1.0)
    points = client.get(f"/jobs/{job['id']}/metrics", params={"keys": "loss"}).json()
    logged = points["series"]["loss"]["count"]
    if logged != spec["training_args"]["max_steps"]:
        raise RuntimeError(f"job {job['id']}: {logged} points stored, expected every step")
    runtime = float(job["result"]["metrics"]["train_runtime"])
    FLUSHER_CPU.append(flusher_cpu_seconds(job["id"]) / runtime)
    return runtime


FLUSHER_CPU: list[float] = []  # per job: flusher thread CPU / train_runtime


# --- (c): a local MLflow tracking server ----------------------------------------------------------
@contextmanager
def mlflow_server(work: Path, env: dict[str, str]) -> Iterator[str]:
    from traindepot.embedded import free_port
    from traindepot.stack import wait_until_up

    port = free_port()
    store = work / "mlflow"
    store.mkdir()
    log = (work / "mlflow-server.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--default-artifact-root", str(store / "artifacts"),
            "--workers", "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, 120, path="/health", process=proc)  # log: {work}/mlflow-server.log
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


# --- the run ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--bare", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        bare_train(Path(args.bare[0]), Path(args.bare[1]), args.bare[2])
        return 0

    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRAINDEPOT_HOME": str(work / "home"),
        "MLFLOW_EXPERIMENT_NAME": "traindepot-bench",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)  # the stack (worker, API) reads the same
    spec = bench_spec(args.steps)
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack

    results: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with (
        running_stack(host="127.0.0.1", port=free_port()) as stack,
        contextmanager_or_none(None if args.no_mlflow else mlflow_server(work, env)) as mlflow_url,
        httpx.Client(
            base_url=stack.url,
            timeout=30,
            headers={"Authorization": f"Bearer {stack.admin_key}"},
        ) as client,
    ):
        mlflow_env = {**env, "MLFLOW_TRACKING_URI": mlflow_url or ""}
        # One warm-up of each (page cache, first compilation of kernels), not counted.
        run_bare(spec_path, work, env)
        run_job(client, spec)
        FLUSHER_CPU.clear()
        for round_ in range(1, args.repeats + 1):
            results["a"].append(run_bare(spec_path, work, env))
            results["b"].append(run_job(client, spec))
            if mlflow_url:
                results["c"].append(run_bare(spec_path, work, mlflow_env, "mlflow"))
            print(
                f"round {round_}/{args.repeats}: "
                + "  ".join(f"{k}={v[-1]:.3f}s" for k, v in results.items() if v),
                flush=True,
            )
        hooks = [hook_seconds_per_step() for _ in range(5)]
    report(results, args, hooks)
    return 0


@contextmanager
def contextmanager_or_none(cm: Any) -> Iterator[Any]:
    if cm is None:
        yield None
    else:
        with cm as value:
            yield value


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics (k, n + 1 - k)
    with the largest k whose binomial(n, 1/2) coverage is still at least `confidence`
    (n = 11: the 2nd and 10th of 11, 98.8%); the whole range when n is too small."""
    ordered = sorted(values)
    n = len(ordered)
    k = 0
    while k + 1 <= n // 2:
        below = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # P(X <= k)
        if 1 - 2 * below < confidence:
            break
        k += 1
    return ordered[max(k - 1, 0)], ordered[n - max(k, 1)]


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    lo, hi = median_interval(values)
    return (
        f"median {fmt.format(statistics.median(values))}, min {fmt.format(min(values))},"
        f" max {fmt.format(max(values))}, 95% interval of the median"
        f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    )


def report(results: dict[str, list[float]], args: argparse.Namespace, hooks: list[float]) -> None:
    names = {
        "a": "(a) bare Trainer.train()",
        "b": "(b) traindepot job",
        "c": "(c) report_to=mlflow",
    }
    base = statistics.median(results["a"])
    print(
        f"\n{args.steps} steps, logging_steps=1, {args.repeats} repetitions, "
        f"OMP_NUM_THREADS={args.threads}; train_runtime"
    )
    for key, values in results.items():
        if not values:
            continue
        print(f"{names[key]:28} {_spread(values)} s;  all runs: "
              + " ".join(f"{v:.3f}" for v in values))  # fmt: skip
    # The rounds are interleaved, so each round's ratio pairs runs made side by side.
    ratios: dict[str, list[float]] = {
        key: [v / a for v, a in zip(values, results["a"], strict=False)]
        for key, values in results.items()
        if key != "a" and values
    }
    print("\nPer-round ratios to (a) (paired by round):")
    for key, values in ratios.items():
        print(f"  {names[key]:28} {_spread(values)}")
    bare_step = base / args.steps
    hook = statistics.median(hooks)
    together = [1 + h / bare_step + f for h in hooks for f in FLUSHER_CPU]
    print(
        "\nIn the training process, per logged step (less noisy than the end-to-end ratio):\n"
        f"  callback hooks       us per step: {_spread([h * 1e6 for h in hooks], '{:.1f}')}"
        f" ({hook / bare_step:.4f} of a bare step, {bare_step * 1e3:.2f} ms)\n"
        "  flusher thread CPU   share of train_runtime over the jobs: "
        f"{_spread(FLUSHER_CPU, '{:.4f}')}"
        "\n                       (an upper bound on the GIL time it takes from training)\n"
        f"  together             {1 + hook / bare_step + statistics.median(FLUSHER_CPU):.4f}"
        f" (every hook x flusher pairing: min {min(together):.4f}, max {max(together):.4f};"
        " limit 1.02)"
    )
    for key, values in ratios.items():
        lo, hi = median_interval(values)
        verdict = (
            "within"
            if hi <= 1.02
            else "above"
            if lo > 1.02
            else "not resolved (the interval straddles the limit)"
        )
        if key == "b":
            print(f"\n(b)/(a): paired median {statistics.median(values):.3f},"
                  f" 95% interval [{lo:.3f}, {hi:.3f}]: limit 1.02 {verdict}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
