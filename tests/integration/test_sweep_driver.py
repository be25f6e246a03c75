"""The sweep driver (db/sweeps.py) and the claim's per-sweep cap (db/sweep_caps.py) on a real
PostgreSQL with the real migrations and a real Optuna study, without a worker: the states a
crash or a race leaves, made directly.

- a study trial asked by a driver that died before its commit gets its job on the next pass,
  with the parameters Optuna stored;
- a trial whose job ended is told once: later passes change nothing, and an ended sweep
  stays as it ended;
- with every device free, the claim takes no more of a sweep's trials than its cap;
- a sweep stored by a submit that died before making its study gets one, and its trials.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.conftest import _fresh_database
from tests.specs import tiny_spec
from traindepot.settings import Settings
from traindepot.sweeps import SweepSpec, distributions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    from db.migrate import upgrade

    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name, url = _fresh_database(admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_sweep(url: str, *, study: bool = True, **overrides: object) -> tuple[uuid.UUID, SweepSpec]:
    from db import studies, sweeps
    from db.session import session_scope

    body = {
        "name": "driver",
        "base": tiny_spec(training_args={"eval_strategy": "steps", "eval_steps": 2}),
        "search_space": {
            "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
        },
        "sampler": "random",
        "max_trials": 3,
        "max_concurrent_trials": 1,
        **overrides,
    }
    sweep = SweepSpec.model_validate(body)
    with session_scope(url) as session:
        sweep_id = sweeps.create(session=session, sweep=sweep, tenant="t", submitted_by=None).id
    if study:
        studies.create(sweep_id, sweep, url)
    return sweep_id, sweep


def advance(url: str, sweep_id: uuid.UUID) -> bool:
    from db import sweeps
    from db.session import session_scope

    with session_scope(url) as session:
        return sweeps.advance(
            session=session, sweep_id=sweep_id, settings=Settings(database_url=url)
        ).changed


def trials(url: str, sweep_id: uuid.UUID) -> list[tuple[int, str, dict[str, object]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT trial_number, status, spec FROM jobs WHERE sweep_id = %s ORDER BY 1",
            (sweep_id,),
        ).fetchall()
    return [(int(n), str(status), spec) for n, status, spec in rows]


def states(url: str, sweep_id: uuid.UUID) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT t.state FROM optuna.trials t JOIN optuna.studies s USING (study_id)"
            " WHERE s.study_name = %s ORDER BY t.number",
            (f"sweep-{sweep_id}",),
        ).fetchall()
    return [str(r[0]) for r in rows]


def sql(url: str, query: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params)


def _forget_settings() -> None:
    """The process' cached settings, engines and session factories, read again on next use."""
    from db import session
    from traindepot.settings import get_settings

    get_settings.cache_clear()
    session.get_engine.cache_clear()
    session._factory.cache_clear()


@pytest.fixture(autouse=True)
def _settings(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This module's database for the code under test; afterwards the process' own again
    (a later test of this process must not reach this module's database, dropped by then)."""
    monkeypatch.setenv("TRAINDEPOT_DATABASE_URL", database_url)
    _forget_settings()
    yield
    monkeypatch.undo()
    _forget_settings()


def test_an_asked_trial_without_a_job_gets_one_and_a_trial_is_told_once(
    database_url: str,
) -> None:
    from db import studies

    url = database_url
    sweep_id, sweep = new_sweep(url)
    assert advance(url, sweep_id)
    # One running and one asked ahead: `max_concurrent_trials + 1` active.
    assert [(n, s) for n, s, _ in trials(url, sweep_id)] == [(0, "queued"), (1, "queued")]

    # A driver asked trial 2 and died before committing its job.
    lost = studies.load(sweep_id, sweep, url).ask(distributions(sweep))
    assert advance(url, sweep_id)
    rows = trials(url, sweep_id)
    assert [n for n, _, _ in rows] == [0, 1, 2]
    spec = rows[2][2]
    assert spec["training_args"] == {
        **spec["training_args"],  # type: ignore[dict-item]
        "learning_rate": lost.params["training_args.learning_rate"],
    }
    assert states(url, sweep_id) == ["RUNNING"] * 3

    # Trial 0 ends; its evaluations give its objective (the best of them).
    job0 = sql_one(url, "SELECT id FROM jobs WHERE sweep_id = %s AND trial_number = 0", sweep_id)
    for step, loss in ((2, 3.0), (4, 2.5), (6, 2.75)):
        sql(
            url,
            "INSERT INTO job_metrics (job_id, step, kind, values, attempt, recorded_at)"
            " VALUES (%s, %s, 'eval', %s, 1, now())",
            job0,
            step,
            psycopg.types.json.Jsonb({"eval_loss": loss}),
        )
    sql(url, "UPDATE jobs SET status = 'succeeded' WHERE id = %s", job0)
    assert advance(url, sweep_id)
    assert states(url, sweep_id) == ["COMPLETE", "RUNNING", "RUNNING"]
    told = studies.load(sweep_id, sweep, url).get_trials()[0]
    assert told.value == 2.5
    assert not advance(url, sweep_id)  # nothing left to do: nothing done twice
    assert studies.load(sweep_id, sweep, url).get_trials()[0].datetime_complete == (
        told.datetime_complete
    )

    # The rest fail: the budget of 3 is spent, the sweep ends, and stays ended.
    sql(
        url, "UPDATE jobs SET status = 'failed' WHERE sweep_id = %s AND status = 'queued'", sweep_id
    )
    assert advance(url, sweep_id)
    assert states(url, sweep_id) == ["COMPLETE", "FAIL", "FAIL"]
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "succeeded"
    sql(url, "UPDATE sweeps SET status = 'cancelled' WHERE id = %s", sweep_id)
    assert not advance(url, sweep_id)
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "cancelled"


def sql_one(url: str, query: str, *params: object) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_the_claim_holds_the_cap_of_a_sweep_with_devices_free(database_url: str) -> None:
    from db import scheduling, tenants
    from db.session import session_scope

    url = database_url
    sweep_id, _ = new_sweep(url, max_trials=4, max_concurrent_trials=2)
    assert advance(url, sweep_id)
    assert [s for _, s, _ in trials(url, sweep_id)] == ["queued"] * 3
    claimant = scheduling.Claimant(
        queues=["default"],
        worker="w",
        lease_seconds=30,
        free_gpus=4,
        total_gpus=4,
        default_quota=tenants.Quota(100, 8),
    )
    claimed = []
    for _ in range(3):
        with session_scope(url) as session:
            claimed.append(scheduling.claim_next(session=session, claimant=claimant))
    assert claimed[0] is not None and claimed[1] is not None
    assert claimed[2] is None  # the third waits for a trial to end, though 2 devices are free
    assert sorted(s for _, s, _ in trials(url, sweep_id)) == ["queued", "running", "running"]
    sql(url, "UPDATE jobs SET status = 'succeeded' WHERE id = %s", claimed[0].job_id)
    with session_scope(url) as session:
        assert scheduling.claim_next(session=session, claimant=claimant) is not None


def test_a_sweep_whose_submit_died_before_its_study_gets_one(database_url: str) -> None:
    from db import sweeps

    url = database_url
    sweep_id, _ = new_sweep(url, study=False)
    assert sweeps.study_trials(sweep_id) == []  # read before: nothing, not an error
    assert advance(url, sweep_id)
    assert [n for n, _, _ in trials(url, sweep_id)] == [0, 1]
    assert states(url, sweep_id) == ["RUNNING", "RUNNING"]
