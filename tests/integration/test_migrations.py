"""The migrations and the models agree, both ways, on a fresh database; and the event
stream's backlog query (db/metrics.py `points_after`) is served by its index."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from db import metrics
from db.migrate import alembic_config
from db.session import sqlalchemy_url
from tests.integration.conftest import _fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name, url = _fresh_database(admin_url)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_models_match_migrations_up_down_and_up_again(fresh_database_url: str) -> None:
    config = alembic_config(fresh_database_url)
    command.upgrade(config, "head")
    # Raises if autogenerate would emit any operation: models and migrations agree.
    command.check(config)
    command.downgrade(config, "base")
    with psycopg.connect(fresh_database_url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert [t for (t,) in tables if t != "alembic_version"] == []
    command.upgrade(config, "head")
    command.check(config)


def test_event_backlog_query_uses_the_job_id_id_index(fresh_database_url: str) -> None:
    command.upgrade(alembic_config(fresh_database_url), "head")
    jobs = [uuid.uuid4() for _ in range(20)]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        for job_id in jobs:
            conn.execute(
                "INSERT INTO jobs (id, name, status, spec, queue, priority, attempt,"
                " max_restarts) VALUES (%s, 'ix', 'succeeded', '{}', 'default', 5, 1, 3)",
                (job_id,),
            )
        # Interleaved writes of many jobs (as concurrent workers write them), 2000 points each.
        conn.execute(
            """INSERT INTO job_metrics (job_id, step, kind, "values", attempt, recorded_at)
            SELECT (%s::uuid[])[1 + n %% 20], n / 20, 'train', '{"loss": 1.0}', 1, now()
            FROM generate_series(0, 39999) AS n""",
            (jobs,),
        )
        conn.execute("ANALYZE job_metrics")
    query = metrics.points_after_query(job_id=jobs[0], after_id=0, limit=1000)
    engine = create_engine(sqlalchemy_url(fresh_database_url))
    try:
        sql = str(query.compile(bind=engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {sql}")))
    finally:
        engine.dispose()
    # Both conditions are index conditions (the planner may still pick a bitmap scan and
    # sort the page, by its cost estimates; without the index it filters the whole job or
    # the whole table).
    assert "on ix_job_metrics_job_id_id" in plan, plan
    assert "Index Cond: ((job_id = " in plan and "AND (id > 0))" in plan, plan
