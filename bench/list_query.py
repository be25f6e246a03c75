"""`GET /jobs` with 100,000 jobs in the table: the first page and a page 50,000 rows deep,
their query plans and their time (run by hand, not in CI).

Fills the database with `--jobs` rows (once; a realistic spec of about 1 KB each, four
tenants, every status, one created per second), then, for an admin and for one tenant, and
for both without and with a status filter, runs the query `GET /jobs` runs
(`db.jobs.list_page`, compiled by SQLAlchemy) with `EXPLAIN (ANALYZE, BUFFERS)`, and times
the whole read of a page as the route does it (query, ORM rows, `JobSummary` and its JSON):
median of `--repeats`, min and max.

    python -m db.migrate      # with the tree whose migrations apply
    TRAINDEPOT_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/traindepot_bench \\
        python bench/list_query.py --jobs 100000 --deep 50000

Run as a script, it imports `db` and `api` from the tree first on the path: with
`PYTHONPATH=/path/to/older/checkout` the same command measures that checkout (before/after).
Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from api.schemas import JobPage, JobSummary, json_response
from bench.service import spread
from db import jobs
from db.models import JobStatus
from db.session import session_scope

SPEC = {
    "name": "bench", "task": "causal-lm",
    "model": {"from_config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32}},
    "tokenizer": {"builtin": "byte-level"},
    "dataset": {"rows": [{"text": "x" * 40}] * 16, "text_column": "text"},
    "training_args": {"max_steps": 100, "logging_steps": 10, "learning_rate": 0.001},
    "tags": {"team": "bench"},
}  # fmt: skip


def fill(session: Any, count: int) -> None:
    have = session.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    if have >= count:
        return
    session.execute(
        text(
            "INSERT INTO jobs (id, name, tenant, status, spec, queue, priority, attempt,"
            " max_restarts, created_at, updated_at, progress, result)"
            " SELECT gen_random_uuid(), 'job-' || g, 'tenant-' || (g % 4),"
            " (ARRAY['succeeded','failed','cancelled','succeeded','queued','running'])[1 + g % 6],"
            " CAST(:spec AS jsonb), 'default', 5, 1, 3,"
            " now() - make_interval(secs => g), now(),"
            ' \'{"global_step": 100, "max_steps": 100, "loss": 1.5}\'::jsonb,'
            ' CASE WHEN g % 6 IN (0, 3) THEN \'{"global_step": 100, "training_loss": 1.5,'
            ' "metrics": {}}\'::jsonb END'
            " FROM generate_series(:start, :stop) g"
        ),
        {"spec": json.dumps(SPEC), "start": have + 1, "stop": count},
    )
    session.execute(text("ANALYZE jobs"))


def cursor_at(session: Any, depth: int, tenant: str | None, status: str | None) -> jobs.Cursor:
    """The cursor `GET /jobs` hands out after `depth` rows (the last row of the page before)."""
    row = session.execute(
        text(
            "SELECT created_at, id FROM jobs WHERE (CAST(:t AS text) IS NULL OR tenant = :t)"
            " AND (CAST(:s AS text) IS NULL OR status = :s)"
            " ORDER BY created_at DESC, id DESC OFFSET :d LIMIT 1"
        ),
        {"t": tenant, "s": status, "d": depth - 1},
    ).one()
    return jobs.Cursor(created_at=row[0], id=row[1])


def page(session: Any, tenant: str | None, status: str | None, after: Any, limit: int) -> bytes:
    """One page as the route reads and answers it."""
    rows = jobs.list_page(
        session=session,
        status=JobStatus(status) if status else None,
        limit=limit + 1,
        cursor=after,
        tenant=tenant,
    )
    body = JobPage(items=[JobSummary.of(j) for j in rows[:limit]], next_cursor=None)
    return bytes(json_response(body).body)


def explain(session: Any, tenant: str | None, status: str | None, after: Any, limit: int) -> str:
    """The plan of the statement `list_page` sends, with the real values bound."""
    captured: list[Any] = []
    original = session.scalars

    def capture(statement: Any, *args: Any, **kwargs: Any) -> Any:
        captured.append(statement)
        return original(statement, *args, **kwargs)

    session.scalars = capture
    try:
        page(session, tenant, status, after, limit)
    finally:
        session.scalars = original
    sql = captured[0].compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    lines = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")).scalars()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--deep", type=int, default=50_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    assert os.environ.get("TRAINDEPOT_DATABASE_URL"), "set TRAINDEPOT_DATABASE_URL"
    with session_scope() as session:
        fill(session, args.jobs)
    cases = [
        ("admin", None, None), ("admin, status=succeeded", None, "succeeded"),
        ("tenant", "tenant-1", None), ("tenant, status=succeeded", "tenant-1", "succeeded"),
    ]  # fmt: skip
    print(f"| GET /jobs (limit {args.limit}) | first page | {args.deep:,} rows deep (or half) |")
    print("|---|---|---|")
    plans: list[str] = []
    for label, tenant, status in cases:
        timings: list[str] = []
        with session_scope() as session:
            matching = session.execute(
                text(
                    "SELECT count(*) FROM jobs WHERE (CAST(:t AS text) IS NULL OR tenant = :t)"
                    " AND (CAST(:s AS text) IS NULL OR status = :s)"
                ),
                {"t": tenant, "s": status},
            ).scalar_one()
            deep = min(args.deep, matching // 2)
            for after in (None, cursor_at(session, deep, tenant, status)):
                plans.append(
                    f"-- {label}, {'first page' if after is None else f'{deep:,} deep'}\n"
                    + explain(session, tenant, status, after, args.limit)
                )
                seconds = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    page(session, tenant, status, after, args.limit)
                    seconds.append((time.perf_counter() - started) * 1000)
                timings.append(spread(seconds, "{:.1f}", " ms"))
        print(f"| {label} | {timings[0]} | {timings[1]} |", flush=True)
    print("\n(a filtered list with fewer rows: its deep page is half way down)\n")
    print("\n\n".join(plans))


if __name__ == "__main__":
    main()
