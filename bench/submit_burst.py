"""`POST /jobs` burst: 1,000 submissions from 32 clients at once (by hand, not in CI).

One API (`traindepot api --workers N`), no worker, so every job stays queued and its
message stays in Redis where it can be read. Each client submits its share with a unique
name and a random priority 0..9. Checked, not only timed:
- none lost or doubled: every request answered 201, 1,000 distinct ids, 1,000 rows with
  the burst's names, 1,000 messages in the queue's lists, each id exactly once;
- order: the order workers claim them in (db/scheduling.py: effective_queued_at, id; a
  worker claims the most urgent eligible job, whichever message woke it) against
  (priority desc, created_at asc) of the rows; and, for the record, the order of the
  wake-up messages (kombu's priority lists, most urgent first, each list oldest first),
  where a few neighbours may swap within a priority (a commit and its enqueue are not
  atomic across concurrent requests).

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/traindepot_bench \\
        python -m bench.submit_burst --jobs 1000 --clients 32

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import redis

from bench.service import bench_home
from traindepot.demo import demo_spec
from traindepot.embedded import free_port
from traindepot.stack import stop_process, wait_until_up


def queued_ids(redis_url: str, queue: str) -> list[str]:
    """The job ids in the order a worker takes them: priority lists 0..9 (0, the most
    urgent, first: the spec's 9), each from its oldest message (kombu pushes on the left
    and pops on the right)."""
    client = redis.Redis.from_url(redis_url)
    ids: list[str] = []
    for step in range(10):
        key = queue if step == 0 else f"{queue}:{step}"
        for raw in reversed(client.lrange(key, 0, -1)):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.append(str(args[0]))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="API processes")
    args = parser.parse_args()
    database_url = os.environ["TRAINDEPOT_DATABASE_URL"]

    burst = f"burst-{uuid.uuid4().hex[:8]}"
    with bench_home(
        burst,
        settings={
            "TRAINDEPOT_QUEUES": burst,
            "TRAINDEPOT_MAX_ACTIVE_JOBS_PER_TENANT": str(args.jobs * 2),
        },
    ) as bench:
        env, key, redis_server = bench.env, bench.key, bench.redis
        port = free_port()
        command = [sys.executable, "-m", "traindepot.cli", "api", "--port", str(port)]
        if args.workers:
            command += ["--workers", str(args.workers)]
        api = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, timeout=300, path="/readyz")
            rng = random.Random(13)
            specs = [
                {**demo_spec(), "name": f"{burst}-{i}", "queue": burst,
                 "priority": rng.randrange(10)}
                for i in range(args.jobs)
            ]  # fmt: skip
            headers = {"Authorization": f"Bearer {key}"}
            clients = [
                httpx.Client(base_url=url, headers=headers, timeout=120)
                for _ in range(args.clients)
            ]

            def submit(i: int) -> tuple[int, str]:
                response = clients[i % args.clients].post("/jobs", json=specs[i])
                return response.status_code, response.json().get("id", "")

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                answers = list(pool.map(submit, range(args.jobs)))
            seconds = time.perf_counter() - started
            for client in clients:
                client.close()
            with psycopg.connect(database_url) as conn:
                rows = conn.execute(
                    "SELECT id, priority, created_at FROM jobs WHERE queue = %s", (burst,)
                ).fetchall()
                # The order workers claim them in (db/scheduling.py's claim: the most urgent
                # eligible job, whichever message woke the worker).
                claimed = [
                    str(row[0])
                    for row in conn.execute(
                        "SELECT id FROM jobs WHERE queue = %s AND status = 'queued'"
                        " ORDER BY effective_queued_at, id",
                        (burst,),
                    )
                ]
            queued = queued_ids(redis_server.url, burst)
        finally:
            stop_process(api)
    statuses = sorted({status for status, _ in answers})
    ids = {job_id for _, job_id in answers}
    expected = [str(r[0]) for r in sorted(rows, key=lambda r: (-r[1], r[2], str(r[0])))]
    position = {job_id: n for n, job_id in enumerate(expected)}
    out_of_order = sum(1 for a, b in itertools.pairwise(queued) if position[a] > position[b])
    claims_out_of_order = sum(
        1 for a, b in itertools.pairwise(claimed) if position[a] > position[b]
    )
    print(f"{args.jobs} POST /jobs from {args.clients} clients in {seconds:.1f} s:"
          f" {args.jobs / seconds:.1f} submissions/s")  # fmt: skip
    print(f"answers: {statuses}; distinct ids {len(ids)}; rows {len(rows)};"
          f" messages {len(queued)}, distinct {len(set(queued))}")  # fmt: skip
    print(
        f"claim order against (priority desc, created_at): {claims_out_of_order} adjacent"
        f" pairs out of order ({len(claimed)} queued)"
    )
    print(
        f"message order against (priority desc, created_at): {out_of_order} adjacent pairs"
        " out of order"
    )
    lost = args.jobs - len(set(queued) & ids)
    print("none lost or doubled" if lost == 0 and len(queued) == len(rows) == len(ids) ==
          args.jobs else f"LOST OR DOUBLED: {lost} ids without a message")  # fmt: skip


if __name__ == "__main__":
    main()
