"""From a cancel's commit to the training child's stop signal (run by hand, not in CI).

A fresh database holds one `running` job. For each sample a stand-in training child is
started (a Python process whose SIGUSR1 handler writes the wall-clock time it ran at and
exits), and a real `Supervisor` (worker/supervisor.py) watches it with its real lease thread
(`_watch`, as for a job). Then a cancel is committed (`UPDATE jobs SET status =
'cancelling'`, as `db/jobs.py` `request_cancel` does); the clock starts when the COMMIT is
sent and stops in the child's handler. Two ways, interleaved, in the same run:

- `notice`: the supervisor is registered with the worker's listener (worker/control.py),
  as every supervisor is now: the trigger of migration 0011 NOTIFYs at the commit;
- `renewal`: not registered, as before: the cancel is seen at the lease's next renewal
  (every `--heartbeat` seconds, 5 by default, the server's default) and the watch loop's
  next look (every 0.2 s).

    python -m bench.cancel_signal --samples 200 --renewal-samples 10

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg

from bench.scheduler import ADMIN_URL, fresh_database
from db.migrate import upgrade
from traindepot.settings import Settings
from worker.control import control
from worker.supervisor import Supervisor

CHILD = """
import signal, sys, time
def stop(signum, frame):
    sys.stdout.write(repr(time.time()) + "\\n"); sys.stdout.flush(); sys.exit(0)
signal.signal(signal.SIGUSR1, stop)
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(1)
"""


def one_sample(settings: Settings, url: str, job_id: uuid.UUID, *, notice: bool) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET status = 'running', cancel_requested_at = NULL WHERE id = %s",
            (job_id,),
        )
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"ready"
    supervisor = Supervisor(job_id=job_id, attempt=1, settings=settings)
    supervisor.job_dir.mkdir(parents=True, exist_ok=True)
    if notice:
        control(settings).watch(job_id, supervisor.on_change)
    supervisor._child = child
    supervisor.lease.start()
    watching = threading.Thread(target=supervisor._watch, args=(child,))
    watching.start()
    try:
        # The renewal's phase is anything: the cancel comes at a random point of it.
        time.sleep(0.05 if notice else random.uniform(0.05, settings.heartbeat_seconds))
        with psycopg.connect(url) as conn:
            conn.execute(
                "UPDATE jobs SET status = 'cancelling', cancel_requested_at = now() "
                "WHERE id = %s AND status = 'running'",
                (job_id,),
            )
            sent = time.time()
            conn.commit()
        stopped = float(child.stdout.readline())
    finally:
        watching.join()
        supervisor.lease.stop()
        control(settings).forget(job_id)
    return stopped - sent


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return (
        f"{name:8s} n={len(ms):4d}  median {statistics.median(ms):8.2f} ms  p99 {p99:8.2f} ms"
        f"  min {ms[0]:7.2f}  max {ms[-1]:8.2f}  stdev {statistics.pstdev(ms):7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--renewal-samples", type=int, default=10)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    opts = parser.parse_args()
    name, url = fresh_database(opts.admin_url)
    upgrade(url)
    os.environ["TRAINDEPOT_DATABASE_URL"] = url  # the lease's sessions (db/session.py)
    job_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, name, tenant, status, spec, queue, priority, attempt, "
            "max_restarts, queued_at, effective_queued_at, gpus, lease_expires_at) VALUES "
            "(%s, 'bench', 'bench', 'running', '{}'::jsonb, 'default', 5, 1, 3, now(), now(), "
            "1, now() + interval '1 hour')",
            (job_id,),
        )
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(
            home=Path(home),
            database_url=url,
            heartbeat_seconds=opts.heartbeat,
            lease_seconds=3600,
        )
        control(settings).listening.wait(5)
        by_way: dict[str, list[float]] = {"notice": [], "renewal": []}
        for i in range(opts.samples):
            by_way["notice"].append(one_sample(settings, url, job_id, notice=True))
            if i < opts.renewal_samples:
                by_way["renewal"].append(one_sample(settings, url, job_id, notice=False))
    print(f"commit of a cancel -> the child's SIGUSR1 handler (heartbeat {opts.heartbeat:g} s)")
    for way, seconds in by_way.items():
        if seconds:
            print(summary(way, seconds))
    with psycopg.connect(opts.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
