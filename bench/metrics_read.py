"""`GET /jobs/{id}/metrics` on a job with a million points (run by hand, not in CI).

One `traindepot api` process on the database of TRAINDEPOT_DATABASE_URL; a job row of the
benchmark's tenant and its history written by PostgreSQL itself (`generate_series`: a
training point per step with loss, grad_norm and learning_rate, an evaluation every
`--eval-every` steps). Timed over HTTP, one request at a time, `--repeats` times each:
- `keys=loss&max_points=1000` (the issue's request);
- the dashboard's request, `keys=loss,eval_loss,learning_rate&max_points=500`;
and, in this process, the read as the route made it before (every point of the series
through a server-side cursor into the Python downsampler, after a full count), for the
before figure. Each answer is checked: at most `max_points` points a series, in step order,
the first and the last step kept. `EXPLAIN (ANALYZE, BUFFERS)` of the statements the route
sends is printed.

    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/td_perf_metrics \\
        python -m bench.metrics_read --points 1000000 --repeats 11

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg
from sqlalchemy import text

from bench.service import bench_home, spread
from db import metrics
from db.session import session_scope
from traindepot.downsample import downsample
from traindepot.embedded import free_port
from traindepot.stack import stop_process, wait_until_up

_FILL = """
INSERT INTO job_metrics (job_id, attempt, step, kind, epoch, "values", recorded_at)
SELECT CAST(:job_id AS uuid), 1, g, 'train', g / 1000.0,
       jsonb_build_object(
           'loss', 3.0 * exp(-g / (:points / 5.0)) + random() * 0.1
                   + CASE WHEN g % 99991 = 0 THEN 5.0 ELSE 0.0 END,
           'grad_norm', 1.0 + random(),
           'learning_rate', 5e-5 * (1 - g / (:points + 1.0))),
       now()
FROM generate_series(1, CAST(:points AS integer)) AS g
UNION ALL
SELECT CAST(:job_id AS uuid), 1, g, 'eval', g / 1000.0,
       jsonb_build_object('eval_loss', 3.0 * exp(-g / (:points / 5.0)), 'eval_runtime', 0.5),
       now()
FROM generate_series(CAST(:eval_every AS integer), CAST(:points AS integer),
                     CAST(:eval_every AS integer)) AS g
"""


def fill_job(database_url: str, *, tenant: str, points: int, eval_every: int) -> uuid.UUID:
    """A finished job of `tenant` with `points` training points (one per step) and an
    evaluation every `eval_every` steps, written by PostgreSQL (`generate_series`)."""
    job_id = uuid.uuid4()
    with session_scope(database_url) as session:
        session.execute(
            text(
                "INSERT INTO jobs (id, name, tenant, status, spec, queue, priority, attempt,"
                " max_restarts) VALUES (:id, 'bench-history', :tenant, 'succeeded',"
                " CAST('{}' AS jsonb), 'default', 5, 1, 3)"
            ),
            {"id": job_id, "tenant": tenant},
        )
        session.execute(
            text(_FILL), {"job_id": str(job_id), "points": points, "eval_every": eval_every}
        )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE job_metrics")
    return job_id


def _check(
    body: dict[str, Any], keys: list[str], max_points: int, steps: dict[str, tuple[int, int]]
) -> None:
    for key in keys:
        points = body["series"][key]["points"]
        assert 2 <= len(points) <= max_points, (key, len(points))
        assert [p[0] for p in points] == sorted({p[0] for p in points}), key
        assert (points[0][0], points[-1][0]) == steps[key], (key, points[0], points[-1])


def before(database_url: str, job_id: uuid.UUID, key: str, max_points: int) -> int:
    """The route's read before this change: a full count, then every point through the
    downsampler."""
    with session_scope(database_url) as session:
        count = int(
            session.scalar(
                text(
                    """SELECT count(*) FROM job_metrics WHERE job_id = :job_id
                    AND jsonb_typeof("values" -> :key) = 'number'"""
                ),
                {"job_id": job_id, "key": key},
            )
            or 0
        )
        series = metrics.iter_series(session=session, job_id=job_id, key=key)
        return len(downsample(series, count=count, max_points=max_points))


def explain(database_url: str, job_id: uuid.UUID, key: str, max_points: int) -> None:
    where = metrics.series_filter(key)
    params: dict[str, Any] = {"job_id": job_id, "key": key}
    with session_scope(database_url) as session:
        lo, hi = session.execute(
            text(f"SELECT min(step), max(step) FROM job_metrics WHERE {where}"),
            params,
        ).one()
        session.execute(text("SET LOCAL jit = off"))
        statements = {
            "history longer than 20,000 points?": (
                "SELECT count(*) FROM (SELECT 1 FROM job_metrics WHERE job_id = :job_id"
                + (" AND kind = 'eval'" if key.startswith("eval_") else "")
                + " LIMIT :limit) AS p",
                {**params, "limit": 20_001},
            ),
            "samples": (
                metrics._SAMPLES.format(where=where),
                {**params, "lo": lo + 1, "span": hi - lo - 1, "samples": max_points - 2},
            ),
        }
        for name, (sql, values) in statements.items():
            plan = session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), values)
            print(f"\n-- {key}: {name}")
            print("\n".join(row[0] for row in plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--before-repeats", type=int, default=3)
    args = parser.parse_args()

    with bench_home("bench") as bench:
        started = time.monotonic()
        job_id = fill_job(
            bench.database_url, tenant="bench", points=args.points, eval_every=args.eval_every
        )
        print(f"filled {args.points:,} points in {time.monotonic() - started:.1f} s", flush=True)
        last_eval = args.points - args.points % args.eval_every
        steps = {
            "loss": (1, args.points),
            "learning_rate": (1, args.points),
            "eval_loss": (args.eval_every, last_eval),
        }
        port = free_port()
        api = subprocess.Popen(
            [sys.executable, "-m", "traindepot.cli", "api", "--port", str(port), "--workers", "1"],
            env=bench.env,
            stdout=(bench.home / "api.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        cases = {
            "loss, max_points=1000": ("loss", 1000),
            "dashboard: loss,eval_loss,learning_rate, max_points=500": (
                "loss,eval_loss,learning_rate",
                500,
            ),
        }
        try:
            wait_until_up(url, timeout=300, path="/readyz")
            client = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {bench.key}"}, timeout=120
            )
            for name, (keys, max_points) in cases.items():
                params: dict[str, str | int] = {"keys": keys, "max_points": max_points}
                client.get(f"/jobs/{job_id}/metrics", params=params).raise_for_status()  # warm
                times: list[float] = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    response = client.get(f"/jobs/{job_id}/metrics", params=params)
                    times.append((time.perf_counter() - t0) * 1000)
                    response.raise_for_status()
                    _check(response.json(), keys.split(","), max_points, steps)
                print(f"after  | {name} | {spread(times, '{:.1f}', ' ms')}", flush=True)
        finally:
            stop_process(api)
        times = []
        for _ in range(args.before_repeats):
            t0 = time.perf_counter()
            kept = before(bench.database_url, job_id, "loss", 1000)
            times.append((time.perf_counter() - t0) * 1000)
        took = spread(times, "{:.1f}", " ms")
        print(
            f"before | loss, max_points=1000 (in-process, no HTTP) | {took}; {kept} points",
            flush=True,
        )
        explain(bench.database_url, job_id, "loss", 1000)
        explain(bench.database_url, job_id, "eval_loss", 500)


if __name__ == "__main__":
    main()
