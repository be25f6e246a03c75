"""Each API process' first `POST /jobs` over HTTP against its later ones, end to end (run by
hand, not in CI).

A round starts `traindepot api --workers 2` from a source tree (a fresh PostgreSQL database
migrated by that tree, an embedded Redis, an admin key), waits until both processes have
answered `/readyz` with 200 and at least `--settle` seconds have passed since the start (the
issue measured at 8 s), and then submits:

- first: `POST /jobs` one at a time, each on a new connection, until both processes have
  served one (uvicorn's processes share the listening socket and take new connections in
  turn as they come; the process that served a request is found from the server end of
  its connection, psutil). A process' first submit is the first request it served, alone;
- later: the requests a process served after its first, and `--later` more.

Each spec is a tiny GPT-2 from a config of a size no earlier request used (no cached
parameter count helps); no worker runs, the jobs stay queued. Trees, interleaved by round:
`before` (a checkout of the code before issue 22, `--before`) and `after` (this one).

    git worktree add --detach /tmp/td-before main  # (2dddc4e when measured)
    python -m bench.first_submit_http --before /tmp/td-before --rounds 2
    python -m bench.first_submit_http --before /tmp/td-before --rounds 2 --uvicorn

`traindepot api` before this fix left uvicorn's 5 s health check: on a loaded machine its
processes were killed before they were ready, without end (`replaced` counts them).
`--uvicorn` starts both trees alike with 120 s, to compare the first submits alone.

PostgreSQL: the server of TRAINDEPOT_ADMIN_DATABASE_URL (default the local one). Results:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.service import spread
from traindepot.embedded import EmbeddedRedis, free_port

HOST = "127.0.0.1"
KEY_SCRIPT = """
import sys
from pathlib import Path
from api import keyring
from traindepot.settings import Settings
settings = Settings(home=Path(sys.argv[1]), database_url=sys.argv[2])
print(keyring.ensure_local_admin_key(settings, database_url=sys.argv[2])[0])
"""
_sizes = iter(range(1, 1_000_000))


def spec() -> bytes:
    """A tiny causal-LM spec whose model no earlier request had."""
    n = next(_sizes)
    return json.dumps(
        {
            "name": f"first-submit-{n}",
            "task": "causal-lm",
            "model": {
                "from_config": {
                    "model_type": "gpt2", "n_layer": 1 + n % 3, "n_head": 2,
                    "n_embd": 16 + 2 * n, "n_positions": 64,
                }
            },
            "tokenizer": {"builtin": "byte-level"},
            "dataset": {"rows": [{"text": f"line {i}"} for i in range(16)], "text_column": "text"},
            "preprocessing": {"max_length": 32},
            "training_args": {"max_steps": 2, "per_device_train_batch_size": 4, "use_cpu": True},
        }
    ).encode()  # fmt: skip


def serving_pid(parent: psutil.Process, client_port: int) -> int | None:
    """The API process holding the server end of the connection from `client_port`."""
    for child in parent.children():
        try:
            for conn in child.net_connections("tcp"):
                if conn.raddr and conn.raddr.port == client_port:
                    return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def request(
    port: int,
    parent: psutil.Process,
    method: str,
    path: str,
    key: str,
    body: bytes | None = None,
) -> tuple[int, float, int | None]:
    """(status, seconds, the serving process) of one request on a new connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.connect()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        started = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        return response.status, elapsed, serving_pid(parent, client_port)
    finally:
        conn.close()


def api_processes(parent: psutil.Process) -> set[int]:
    """The pids of uvicorn's worker processes under `parent` now (uvicorn replaces a process
    that misses its health check: a new pid)."""
    pids = set()
    for child in parent.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def one_round(
    tree: Path, admin_url: str, settle: float, later: int, ready_timeout: float, bare: bool
) -> dict[str, Any]:
    name = f"td_first_submit_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    home = Path(tempfile.mkdtemp(prefix="td-first-submit-"))
    redis_server = EmbeddedRedis(home / "redis")
    env = {
        **os.environ,
        "TRAINDEPOT_HOME": str(home),
        "TRAINDEPOT_DATABASE_URL": database_url,
        "TRAINDEPOT_REDIS_URL": redis_server.url,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(tree),
    }
    api: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([sys.executable, "-m", "db.migrate"], cwd=tree, env=env, check=True)
        key = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT, str(home), database_url],
            cwd=tree, env=env, check=True, capture_output=True, text=True,
        ).stdout.split()[-1]  # fmt: skip
        port = free_port()
        started = time.monotonic()
        with (home / "api.log").open("ab") as log:
            command = ["traindepot.cli", "api", "--workers", "2"]
            if bare:  # uvicorn itself, the same health check timeout for both trees
                (home / "prometheus").mkdir()
                env["PROMETHEUS_MULTIPROC_DIR"] = str(home / "prometheus")
                command = ["uvicorn", "api.app:app", "--workers", "2",
                           "--timeout-worker-healthcheck", "120"]  # fmt: skip
            api = subprocess.Popen(
                [sys.executable, "-m", *command, "--host", HOST, "--port", str(port)],
                cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        parent = psutil.Process(api.pid)
        ready: set[int] = set()
        seen: set[int] = set()
        while (pids := api_processes(parent)) - ready or len(pids) < 2:
            seen |= pids
            if api.poll() is not None:
                raise RuntimeError(f"the API stopped: {home / 'api.log'}")
            if time.monotonic() - started > ready_timeout:
                # uvicorn killed the processes that missed its health check (api.log)
                return {"ready_s": None, "first": [], "later": [], "replaced": len(seen) - 2}
            try:
                status, _, pid = request(port, parent, "GET", "/readyz", key)
            except OSError:
                status, pid = 0, None
            if status == 200 and pid is not None:
                ready.add(pid)
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        time.sleep(max(0.0, settle - ready_s))
        first: dict[int, float] = {}
        rest = []
        for _ in range(100):
            if not api_processes(parent) - set(first):
                break
            status, seconds, pid = request(port, parent, "POST", "/jobs", key, spec())
            if status != 201 or pid is None:
                raise RuntimeError(f"POST /jobs answered {status} (process {pid})")
            if pid in first:
                rest.append(seconds)
            else:
                first[pid] = seconds
        else:
            raise RuntimeError("a process never served a request")
        for _ in range(later):
            status, seconds, _pid = request(port, parent, "POST", "/jobs", key, spec())
            if status != 201:
                raise RuntimeError(f"POST /jobs answered {status}")
            rest.append(seconds)
        seen |= api_processes(parent)
        return {
            "ready_s": ready_s,
            "first": [first[pid] for pid in sorted(api_processes(parent))],
            "later": rest,
            "replaced": len(seen) - 2,  # processes uvicorn killed and started again
        }
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
        redis_server.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, required=True, help="the tree before the fix")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--later", type=int, default=6)
    parser.add_argument("--ready-timeout", type=float, default=300)
    parser.add_argument(
        "--uvicorn",
        action="store_true",
        help="start `uvicorn api.app:app --workers 2` with a 120 s health check for both"
        " trees instead of `traindepot api` (whose health check timeout this fix changed)",
    )
    opts = parser.parse_args()
    admin_url = os.environ.get(
        "TRAINDEPOT_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    trees = {"before": opts.before.resolve(), "after": Path.cwd()}
    found: dict[str, list[dict[str, Any]]] = {way: [] for way in trees}
    for round_ in range(1, opts.rounds + 1):
        for way, tree in trees.items():
            got = one_round(
                tree, admin_url, opts.settle, opts.later, opts.ready_timeout, opts.uvicorn
            )
            found[way].append(got)
            if got["ready_s"] is None:
                print(
                    f"round {round_} {way}: not ready after {opts.ready_timeout:.0f} s,"
                    f" {got['replaced']} process(es) replaced, load {os.getloadavg()}",
                    flush=True,
                )
                continue
            print(
                f"round {round_} {way}: ready {got['ready_s']:.1f} s, first"
                f" {[round(s * 1000) for s in got['first']]} ms, later median"
                f" {statistics.median(got['later']) * 1000:.0f} ms, {got['replaced']} process(es)"
                f" replaced, load {os.getloadavg()}",
                flush=True,
            )
    print()
    print(
        "| tree | both processes ready after | each process' first POST /jobs,"
        " median (min-max) | later POST /jobs | first / later | processes replaced |"
    )
    print("|---|---|---|---|---|---|")
    for way, all_runs in found.items():
        runs = [r for r in all_runs if r["ready_s"] is not None]
        if not runs:
            print(f"| {way} | never ready ({len(all_runs)} rounds) | | | |")
            continue
        ready = [r["ready_s"] for r in runs]
        first = [s * 1000 for r in runs for s in r["first"]]
        rest = [s * 1000 for r in runs for s in r["later"]]
        print(
            f"| {way} | {spread(ready, '{:.1f}', ' s')} | {spread(first, '{:.0f}', ' ms')}"
            f" | {spread(rest, '{:.0f}', ' ms')}"
            f" | {statistics.median(first) / statistics.median(rest):.1f}"
            f" | {sum(r['replaced'] for r in all_runs)} in {len(all_runs)} rounds |"
        )


if __name__ == "__main__":
    main()
