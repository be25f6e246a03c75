"""What API keys cost a read: `GET /jobs/{id}` with a key against the same API with auth off,
side by side in one run (run by hand, not in CI).

Two API processes on one database (one with `TRAINDEPOT_AUTH=false`), one job row, and `wrk`
(Debian's package) against each in turn, interleaved so that load from elsewhere hits both
alike; the table shows each round and the ratio of the medians. Goal: keyed / open >= 0.9.

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/traindepot_bench \\
        python -m bench.auth --rounds 5 --seconds 10 --connections 64

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess

import httpx

from bench.service import bench_home
from traindepot.demo import demo_spec
from traindepot.embedded import free_port
from traindepot.stack import start_api, stop_process, wait_until_up

RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
P99 = re.compile(r"99%\s+([\d.]+)(us|ms|s)")
NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk(url: str, *, seconds: int, connections: int, key: str | None) -> tuple[float, float]:
    """(requests per second, p99 in ms); any error response fails the run."""
    out = _wrk(url, seconds=seconds, connections=connections, key=key)
    if NON_2XX.search(out):
        raise RuntimeError(f"error responses from {url}:\n{out}")
    rate, p99, _ = _parse(out)
    return rate, p99


def wrk_run(
    url: str, *, seconds: int, connections: int, key: str | None
) -> tuple[float, float, int]:
    """(requests per second, p99 in ms, errors: non-2xx answers and socket errors)."""
    out = _wrk(url, seconds=seconds, connections=connections, key=key)
    rate, p99, failed = _parse(out)
    non_2xx = NON_2XX.search(out)
    return rate, p99, failed + (int(non_2xx.group(1)) if non_2xx else 0)


def _wrk(url: str, *, seconds: int, connections: int, key: str | None) -> str:
    headers = ["-H", f"Authorization: Bearer {key}"] if key else []
    return subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", *headers, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def _parse(out: str) -> tuple[float, float, int]:
    rate, p99 = RATE.search(out), P99.search(out)
    assert rate and p99, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = SOCKET_ERRORS.search(out)
    failed = sum(int(n) for n in errors.groups()) if errors else 0
    return float(rate.group(1)), float(p99.group(1)) * scale, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    with bench_home("bench") as bench:
        home, env, key = bench.home, bench.env, bench.key
        keyed, keyed_url = start_api(env, home / "api-keyed.log", port=free_port())
        open_, open_url = start_api(
            {**env, "TRAINDEPOT_AUTH": "false"}, home / "api-open.log", port=free_port()
        )
        try:
            for url in (keyed_url, open_url):
                wait_until_up(url, path="/readyz")
            job = (
                httpx.post(
                    f"{keyed_url}/jobs",
                    json=demo_spec(),
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                )
                .raise_for_status()
                .json()
            )
            # The job stays queued (no worker): the row is all the route reads.
            rows: list[tuple[str, float, float]] = []
            for _ in range(args.rounds):
                for name, url, with_key in (
                    ("keyed", keyed_url, key),
                    ("open", open_url, None),
                ):
                    rate, p99 = wrk(
                        f"{url}/jobs/{job['id']}",
                        seconds=args.seconds,
                        connections=args.connections,
                        key=with_key,
                    )
                    rows.append((name, rate, p99))
                    print(f"{name:6} {rate:9.1f} req/s  p99 {p99:7.1f} ms", flush=True)
        finally:
            stop_process(keyed)
            stop_process(open_)
    medians = {
        name: (
            statistics.median(r for n, r, _ in rows if n == name),
            statistics.median(p for n, _, p in rows if n == name),
        )
        for name in ("keyed", "open")
    }
    for name, (rate, p99) in medians.items():
        spread = [r for n, r, _ in rows if n == name]
        print(
            f"median {name:6} {rate:9.1f} req/s (min {min(spread):.1f}, max {max(spread):.1f})"
            f"  p99 {p99:.1f} ms"
        )
    print(f"keyed / open throughput: {medians['keyed'][0] / medians['open'][0]:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
