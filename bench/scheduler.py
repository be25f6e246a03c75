"""What the scheduler's claim costs with a long queue (run by hand, not in CI).

A fresh database with `--queued` queued jobs (random priorities over 0..9, 20 tenants,
submission times spread over an hour) and, in the same run, two ways to take a job:

- `claim_next` (db/scheduling.py): the most urgent eligible job by effective priority,
  within the tenants' running limits, `FOR UPDATE SKIP LOCKED`, then the claim itself;
- the peer: `claim` by id (db/attempts.py), the claim of the data path before the
  scheduler, when the broker chose the job: the floor of what taking a job can cost;
- `claim_next` on a second queue of the same database that holds only `--claims` jobs: the
  claim's cost should not grow with the queue.

Each is timed per claim (claim and commit, one transaction, as a worker does it) over
`--claims` claims from one thread, then as jobs scheduled per second with `--workers`
threads claiming at once. Claimed jobs are set back to queued between the rounds (no worker
runs), so every round sees the same queue length. Interleaved rounds, medians reported.

    python -m bench.scheduler --queued 10000 --claims 1000 --workers 4 --rounds 3

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import psycopg
from sqlalchemy import text

from db import attempts, scheduling, tenants
from db.migrate import upgrade
from db.session import session_scope

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
QUOTA = tenants.Quota(max_active_jobs=1_000_000, max_running_jobs=1_000_000)


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"traindepot_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def fill(url: str, queued: int, aging_seconds: float, queue: str) -> list[uuid.UUID]:
    """`queued` queued jobs of `queue`, inserted in one statement."""
    with session_scope(url) as session:
        ids = session.execute(
            text(
                """
                INSERT INTO jobs (id, name, tenant, status, spec, queue, priority, attempt,
                                  max_restarts, queued_at, effective_queued_at, gpus)
                SELECT gen_random_uuid(), 'bench-' || n, 'team-' || (n % 20), 'queued',
                       '{"name": "bench"}'::jsonb, :queue, p, 0, 3, t,
                       t - make_interval(secs => p * :aging), 1
                FROM (SELECT n, (random() * 9)::int AS p,
                             now() - random() * interval '1 hour' AS t
                      FROM generate_series(1, :n) AS n) AS rows
                RETURNING id
                """
            ),
            {"n": queued, "aging": aging_seconds, "queue": queue},
        ).scalars()
        return list(ids)


def requeue_all(url: str) -> None:
    with session_scope(url) as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL"
                " WHERE status = 'running'"
            )
        )
        session.execute(text("DELETE FROM job_attempts"))


def scheduler_claim(url: str, queue: str) -> Callable[[], bool]:
    claimant = scheduling.Claimant(
        queues=[queue],
        worker="bench",
        lease_seconds=30,
        free_gpus=1,
        total_gpus=1,
        default_quota=QUOTA,
    )

    def claim() -> bool:
        with session_scope(url) as session:
            got = scheduling.claim_next(session=session, claimant=claimant)
        return got is not None

    return claim


def by_id_claim(url: str, ids: list[uuid.UUID]) -> Callable[[], bool]:
    lock = threading.Lock()
    order = list(ids)

    def claim() -> bool:
        with lock:
            job_id = order.pop() if order else None
        if job_id is None:
            return False
        with session_scope(url) as session:
            got = attempts.claim(session=session, job_id=job_id, worker="bench", lease_seconds=30)
        return got is not None

    return claim


def latency_ms(claim: Callable[[], bool], claims: int) -> list[float]:
    times = []
    for _ in range(claims):
        start = time.perf_counter()
        assert claim(), "the queue ran dry"
        times.append((time.perf_counter() - start) * 1000)
    return times


def throughput(claim: Callable[[], bool], claims: int, workers: int) -> float:
    """Claims per second with `workers` threads taking `claims` jobs in all."""
    left = [claims]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            assert claim(), "the queue ran dry"

    threads = [threading.Thread(target=work) for _ in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claims / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    name, url = fresh_database(args.admin_url)
    try:
        upgrade(url)
        ids = fill(url, args.queued, 600.0, "default")
        # A second, shorter queue in the same database: the claim's cost should not depend on
        # how many jobs wait.
        fill(url, args.claims, 600.0, "short")
        random.shuffle(ids)
        with session_scope(url) as session:
            session.execute(text("ANALYZE jobs"))
        variants = {
            f"claim_next, {args.queued} queued": scheduler_claim(url, "default"),
            f"claim_next, {args.claims} queued": scheduler_claim(url, "short"),
            f"claim by id, {args.queued} queued": by_id_claim(url, ids),
        }
        found: dict[str, dict[str, list[float]]] = {
            label: {"p50": [], "p99": [], "tput": []} for label in variants
        }
        for n in range(args.rounds):
            for label, claim in variants.items():
                times = latency_ms(claim, args.claims)
                requeue_all(url)
                rate = throughput(claim, args.claims, args.workers)
                requeue_all(url)
                p50, p99 = statistics.median(times), statistics.quantiles(times, n=100)[98]
                for key, value in (("p50", p50), ("p99", p99), ("tput", rate)):
                    found[label][key].append(value)
                print(
                    f"round {n + 1} {label:32} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                    f"{rate:7.0f} jobs/s ({args.workers} threads)"
                )
        print("\nmedians:")
        medians = {
            label: {k: statistics.median(v) for k, v in d.items()} for label, d in found.items()
        }
        peer = medians[f"claim by id, {args.queued} queued"]
        for label, med in medians.items():
            print(
                f"{label:32} p50 {med['p50']:6.2f} ms  p99 {med['p99']:6.2f} ms  "
                f"{med['tput']:5.0f} jobs/s  (p50 x{med['p50'] / peer['p50']:.2f},"
                f" jobs/s x{med['tput'] / peer['tput']:.2f} of claim by id)"
            )
    finally:
        from db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
