"""`GET /jobs/{id}` under concurrent clients: our API against a bare FastAPI app returning
a constant job JSON (bench/bare_app.py), side by side in one run (by hand, not in CI).

Contenders, each served by uvicorn on this machine, with `wrk` (Debian's package) from the
same machine, interleaved round by round so that load from elsewhere hits all alike:
- bare:   bench/bare_app.py, the same number of processes, no access log;
- after:  `traindepot api --workers N` (this tree);
- uncached: the same with `TRAINDEPOT_API_JOB_CACHE_MIB=0`: every read goes to
  PostgreSQL (api/job_docs.py's cache off), the path of a job's first read;
- before: with `--before-tree DIR`, the API of another checkout (e.g. `git worktree add
  /tmp/td-before <commit>`) run as a new user ran it then: `uvicorn api.app:app`, one
  process, access log on, the asyncio loop and the h11 parser (the install had neither
  uvloop nor httptools); with `--before-as-after` too, served exactly as `after` is.
Errors are counted, not fatal: wrk's non-2xx answers (503 when a request waited
`api_db_wait_seconds` for a database slot) and its socket errors (timeouts: no answer in
2 s).

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/traindepot_bench \\
        python -m bench.api_reads --rounds 2 --seconds 30 --connections 64 \\
        [--before-tree /tmp/td-before]

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

from bench.auth import wrk_run
from bench.service import bench_home, spread
from traindepot.demo import demo_spec
from traindepot.embedded import free_port
from traindepot.stack import stop_process, wait_until_up

NAMES = ("after", "uncached", "before")


def serve(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`cwd`: the tree to run. `python -m` puts the working directory first on sys.path,
    before PYTHONPATH, so a before tree must be the working directory, not a PYTHONPATH."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--before-tree", type=Path, default=None)
    parser.add_argument(
        "--before-as-after",
        action="store_true",
        help="serve the before tree as `after` is served (`traindepot api --workers N`), "
        "to measure one change rather than a new user's set-up",
    )
    args = parser.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))

    with bench_home("bench") as bench:
        home, env, key = bench.home, bench.env, bench.key
        ports = {name: free_port() for name in (*NAMES, "bare")}
        uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1"]
        api = [sys.executable, "-m", "traindepot.cli", "api", "--workers", str(workers)]
        processes = {
            "after": serve([*api, "--port", str(ports["after"])], env, home / "api-after.log"),
            "uncached": serve(
                [*api, "--port", str(ports["uncached"])],
                {**env, "TRAINDEPOT_API_JOB_CACHE_MIB": "0"},
                home / "api-uncached.log",
            ),
        }
        if args.before_tree is not None and args.before_as_after:
            processes["before"] = serve(
                [sys.executable, "-m", "traindepot.cli", "api", "--port", str(ports["before"]),
                 "--workers", str(workers)],
                {**env, "PYTHONPATH": str(args.before_tree.resolve())},
                home / "api-before.log",
                cwd=args.before_tree.resolve(),
            )  # fmt: skip
        elif args.before_tree is not None:
            processes["before"] = serve(
                [*uvicorn, "api.app:app", "--port", str(ports["before"]),
                 "--loop", "asyncio", "--http", "h11"],
                {**env, "PYTHONPATH": str(args.before_tree.resolve())},
                home / "api-before.log",
                cwd=args.before_tree.resolve(),
            )  # fmt: skip
        urls = {name: f"http://127.0.0.1:{ports[name]}" for name in (*processes, "bare")}
        try:
            for name in processes:
                wait_until_up(urls[name], timeout=300, path="/readyz")
            auth = {"Authorization": f"Bearer {key}"}
            job = (
                httpx.post(f"{urls['after']}/jobs", json=demo_spec(), headers=auth, timeout=60)
                .raise_for_status()
                .json()
            )
            # The job stays queued (no worker): the row and its attempts are all the route
            # reads. The bare app answers with this very body.
            body = httpx.get(f"{urls['after']}/jobs/{job['id']}", headers=auth).json()
            (home / "job.json").write_text(json.dumps(body))
            processes["bare"] = serve(
                [*uvicorn, "bench.bare_app:app", "--port", str(ports["bare"]),
                 "--workers", str(workers), "--no-access-log"],
                {**env, "BENCH_JOB_JSON": str(home / "job.json")},
                home / "bare.log",
            )  # fmt: skip
            wait_until_up(urls["bare"], timeout=60, path=f"/jobs/{job['id']}")
            rows: list[tuple[str, float, float, int]] = []
            order = [name for name in ("bare", *NAMES) if name in processes]
            for round_ in range(args.rounds):
                for name in order:
                    rate, p99, errors = wrk_run(
                        f"{urls[name]}/jobs/{job['id']}",
                        seconds=args.seconds,
                        connections=args.connections,
                        key=None if name == "bare" else key,
                    )
                    rows.append((name, rate, p99, errors))
                    print(f"round {round_ + 1} {name:6} {rate:9.1f} req/s  p99 {p99:8.1f} ms"
                          f"  errors {errors}", flush=True)  # fmt: skip
        finally:
            for proc in processes.values():
                stop_process(proc)
    bare = statistics.median(r for n, r, _, _ in rows if n == "bare")
    print(f"\n{workers} processes each; wrk -t2 -c{args.connections} -d{args.seconds}s\n")
    print("| | req/s median (min-max) | p99 median (max) | throughput / bare | errors |")
    print("|---|---|---|---|---|")
    for name in order:
        rates = [r for n, r, _, _ in rows if n == name]
        p99s = [p for n, _, p, _ in rows if n == name]
        errors = sum(e for n, _, _, e in rows if n == name)
        print(
            f"| {name} | {spread(rates, '{:,.0f}')}"
            f" | {statistics.median(p99s):.1f} ms ({max(p99s):.1f}) |"
            f" {statistics.median(rates) / bare:.3f} | {errors} |"
        )


if __name__ == "__main__":
    main()
