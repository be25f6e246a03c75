"""The memory of the API process while a client reads a million-point event backlog (run by
hand, not in CI).

A finished job with `--points` training points (bench/metrics_read.py `fill_job`), one
`traindepot api` process (`--workers 1`: the process measured is the one serving). Its RSS
is read from /proc (psutil) when idle, after a warm-up (a short stream and a metrics read),
then every 50 ms while one client reads `GET /jobs/{id}/events` to its `end`, as fast as
it can (raw bytes, events counted by their `id:` lines). Reported: idle RSS, peak RSS
during the replay, their ratio, the events and the rate. The same run with a backlog page
of `--big-page` points (TRAINDEPOT_SSE_BACKLOG_PAGE) beside the default shows what the
page size does to the peak.

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/td_perf_sse \\
        python -m bench.sse_backlog --points 1000000

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid

import httpx
import psutil

from bench.metrics_read import fill_job
from bench.service import BenchHome, bench_home
from traindepot.embedded import free_port
from traindepot.stack import stop_process, wait_until_up

MiB = 1024 * 1024


def replay(bench: BenchHome, job_id: uuid.UUID, small_job: uuid.UUID, page: int) -> str:
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "traindepot.cli", "api", "--port", str(port), "--workers", "1"],
        env={**bench.env, "TRAINDEPOT_SSE_BACKLOG_PAGE": str(page)},
        stdout=(bench.home / f"api-{page}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {bench.key}"}
    try:
        wait_until_up(url, timeout=300, path="/readyz")
        proc = psutil.Process(api.pid)
        with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
            # Warm-up: every code path of the replay runs once on a small job.
            for _ in range(3):
                client.get(f"/jobs/{small_job}/events").raise_for_status()
                client.get(f"/jobs/{job_id}/metrics").raise_for_status()
            time.sleep(1)
            idle = proc.memory_info().rss
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, proc.memory_info().rss)
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            events = 0
            started = time.monotonic()
            tail = b"\n"  # the stream's first line counts as one after a newline
            try:
                with client.stream("GET", f"/jobs/{job_id}/events") as response:
                    response.raise_for_status()
                    for chunk in response.iter_raw(1 << 16):
                        data = tail + chunk
                        events += data.count(b"\nid:")
                        tail = data[-4:]
                        events -= tail.count(b"\nid:")  # counted again with the next chunk
            finally:
                done.set()
                sampler.join()
            elapsed = time.monotonic() - started
            after = proc.memory_info().rss
    finally:
        stop_process(api)
    return (
        f"| {page:,} | {idle / MiB:.1f} MiB | {peak / MiB:.1f} MiB | {peak / idle:.3f} |"
        f" {after / MiB:.1f} MiB | {events:,} | {elapsed:.1f} s | {events / elapsed:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--big-page", type=int, default=100_000)
    args = parser.parse_args()
    with bench_home("bench") as bench:
        job_id = fill_job(bench.database_url, tenant="bench", points=args.points, eval_every=1000)
        small = fill_job(bench.database_url, tenant="bench", points=2000, eval_every=1000)
        print("| page | RSS idle | RSS peak during replay | peak / idle | RSS after |"
              " events | replay | events/s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for page in (1000, args.big_page):
            print(replay(bench, job_id, small, page), flush=True)


if __name__ == "__main__":
    main()
