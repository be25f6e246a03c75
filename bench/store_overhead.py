"""What the artifact store costs a job (run by hand, not in CI): the same spec, a checkpoint
every `--save-steps` steps, run side by side by two workers of one stack:

  (a) local:  no store, checkpoints stay in the worker's home (today's default);
  (b) bucket: `TRAINDEPOT_ARTIFACTS_URL=s3://...` on moto's S3 server over HTTP on loopback
      (in this process): every checkpoint handed over and uploaded, the model and the log
      uploaded before the job ends.

Two measures, over interleaved rounds whose order alternates (a b, b a, a b, ...), so that
load from elsewhere, rising or falling, hits both alike; the ratio is the median of each
round's ratio (and, beside it, the ratio of the medians):

- the training loop (`train_runtime` of the TrainOutput): what the handoff in `on_save`
  costs the training thread, and what the worker's uploads take of the CPU it trains on;
- submit to `succeeded`: the end-of-job uploads (last checkpoint, model, log) included.

    python -m bench.store_overhead --repeats 5 --steps 200 --save-steps 20

Postgres: TRAINDEPOT_DATABASE_URL if set, else an embedded server; Redis: embedded.
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.service import spread, submit_and_wait
from bench.warm_start import extra_worker

BUCKET = "bench-bucket"


def spec(queue: str, steps: int, save_steps: int) -> dict[str, Any]:
    text = (
        Path(__file__).resolve().parent.parent / "traindepot" / "data" / "alice.txt"
    ).read_text()
    rows = [{"text": line} for line in text.splitlines() if line.strip()][:400]
    return {
        "name": f"store-overhead-{queue}",
        "task": "causal-lm",
        "queue": queue,
        "model": {
            "from_config": {
                "model_type": "gpt2",
                "n_layer": 2,
                "n_head": 4,
                "n_embd": 128,
                "n_positions": 128,
            }
        },
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": rows, "text_column": "text"},
        "preprocessing": {"max_length": 128},
        "training_args": {
            "max_steps": steps,
            "per_device_train_batch_size": 8,
            "logging_steps": 10,
            "save_strategy": "steps",
            "save_steps": save_steps,
            "save_total_limit": 2,
            "use_cpu": True,
            "seed": 7,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-steps", type=int, default=20)
    args = parser.parse_args(argv)

    from moto.server import ThreadedMotoServer

    from traindepot.embedded import free_port
    from traindepot.stack import running_stack, stop_process
    from traindepot.store import store_at

    work = Path(tempfile.mkdtemp(prefix="traindepot-bench-"))
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env = {
        **os.environ,
        **aws,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRAINDEPOT_HOME": str(work / "home"),
        "TRAINDEPOT_QUEUES": "local,bucket",
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    url = f"s3://{BUCKET}/bench"
    store_at(url).fs.mkdir(BUCKET)
    ways = {"local": {}, "bucket": {"TRAINDEPOT_ARTIFACTS_URL": url}}
    loop: dict[str, list[float]] = {way: [] for way in ways}
    wall: dict[str, list[float]] = {way: [] for way in ways}
    try:
        with running_stack(host="127.0.0.1", port=free_port(), worker=False) as stack:
            workers = [
                extra_worker(
                    work / f"{way}.log",
                    way,
                    {**settings, "TRAINDEPOT_HOME": str(work / f"home-{way}")},
                )
                for way, settings in ways.items()
            ]
            try:
                with httpx.Client(
                    base_url=stack.url,
                    timeout=30,
                    headers={"Authorization": f"Bearer {stack.admin_key}"},
                ) as client:
                    for way in ways:  # not counted: the templates' imports, first connections
                        submit_and_wait(client, spec(way, 10, 5))
                    for round_ in range(1, args.repeats + 1):
                        order = list(ways) if round_ % 2 else list(reversed(ways))
                        for way in order:
                            started = time.perf_counter()
                            job = submit_and_wait(client, spec(way, args.steps, args.save_steps))
                            wall[way].append(time.perf_counter() - started)
                            loop[way].append(float(job["result"]["metrics"]["train_runtime"]))
                        print(
                            f"round {round_}/{args.repeats}: "
                            + ", ".join(
                                f"{w} loop {loop[w][-1]:.2f} s, end {wall[w][-1]:.2f} s"
                                for w in ways
                            ),
                            flush=True,
                        )
            finally:
                for proc in workers:
                    stop_process(proc)
    finally:
        moto.stop()
    print(f"\nload: {os.getloadavg()}\n")
    print("| checkpoints | training loop, median (min-max) | submit to succeeded |")
    print("|---|---|---|")
    for way in ways:
        print(
            f"| {way} | {spread(loop[way], '{:.2f}', ' s')} | {spread(wall[way], '{:.2f}', ' s')} |"
        )
    med = statistics.median

    def ratios(values: dict[str, list[float]]) -> str:
        rounds = [b / a for a, b in zip(values["local"], values["bucket"], strict=True)]
        spread_ = f"{min(rounds):.3f}-{max(rounds):.3f}"
        return (
            f"**{med(rounds):.3f}** ({spread_}; of the medians"
            f" {med(values['bucket']) / med(values['local']):.3f})"
        )

    print(f"| **bucket / local**, per round | {ratios(loop)} | {ratios(wall)} |")
    print(f"\nall runs: loop {loop}, end {wall}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
