"""What the webhook outbox costs a job's status changes (run by hand, not in CI).

A job's life as the API and a worker write it (insert `queued`, claim `running`, finish
`succeeded`, each its own transaction) for a tenant with no subscription and for a tenant
with one (the trigger of migration 0008 then writes an event with the job's snapshot and a
delivery at each commit), interleaved round by round so that load from elsewhere hits both
alike. No sender runs: this is the cost on the path of the API and the workers, which never
wait on a receiver. Goal: hooked / quiet <= 1.5 (three extra inserts per change).

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/traindepot_bench \\
        python -m bench.outbox --rounds 7 --jobs 200

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from db import attempts, jobs, webhooks
from db.migrate import upgrade
from db.models import JobStatus
from db.session import session_scope
from traindepot.demo import demo_spec

RESULT = {"global_step": 60, "training_loss": 2.5, "metrics": {"train_runtime": 12.0}}


def life_of_jobs(database_url: str, tenant: str, count: int) -> float:
    """Seconds per job for `count` jobs through queued -> running -> succeeded."""
    spec = demo_spec()
    started = time.perf_counter()
    for _ in range(count):
        with session_scope(database_url) as session:
            job_id = jobs.create(session=session, spec=spec, tenant=tenant).id
        with session_scope(database_url) as session:
            attempt = attempts.claim(
                session=session, job_id=job_id, worker="bench:1", lease_seconds=30
            )
            assert attempt is not None
        with session_scope(database_url) as session:
            attempts.finish(
                session=session,
                job_id=job_id,
                attempt=attempt,
                status=JobStatus.SUCCEEDED,
                result=RESULT,
            )
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    database_url = os.environ["TRAINDEPOT_DATABASE_URL"]
    upgrade(database_url)
    with session_scope(database_url) as session:
        webhooks.subscribe(
            session=session,
            tenant="bench-hooked",
            url="http://192.0.2.1/never-sent",
            events=["job.queued", "job.running", "job.succeeded"],
        )
    life_of_jobs(database_url, "bench-quiet", 20)  # warm-up, not counted
    life_of_jobs(database_url, "bench-hooked", 20)
    quiet: list[float] = []
    hooked: list[float] = []
    print("round  quiet ms/job  hooked ms/job")
    for n in range(args.rounds):
        quiet.append(life_of_jobs(database_url, "bench-quiet", args.jobs) * 1e3)
        hooked.append(life_of_jobs(database_url, "bench-hooked", args.jobs) * 1e3)
        print(f"{n + 1:>5}  {quiet[-1]:>12.2f}  {hooked[-1]:>13.2f}")
    ratio = statistics.median(hooked) / statistics.median(quiet)
    print(
        f"median: quiet {statistics.median(quiet):.2f} ms, hooked {statistics.median(hooked):.2f}"
    )
    print(f"hooked / quiet = {ratio:.3f}")


if __name__ == "__main__":
    main()
