"""The sweep driver (db/sweeps.py) and the claim's per-sweep cap (db/sweep_caps.py) on a real
PostgreSQL with the real migrations and a real Optuna study, without a worker: the states a
crash or a race leaves, made directly.

- a study trial asked by a driver that died before its commit gets its job on the next pass,
  with the parameters Optuna stored;
- a trial whose job ended is told once: later passes change nothing, and an ended sweep
  stays as it ended;
- with every device free, the claim takes no more of a sweep's trials than its cap;
- a sweep stored by a submit that died before making its study gets one, and its trials;
- the objective told with `select: last` is the last evaluation's value;
- no trial is asked once the time budget is spent, and the sweep ends when its last ends;
- past TPE's startup trials, the driver asks the trial TPE proposes;
- successive halving, through the trials' pruning callback, prunes a trial behind at its
  rung, and the driver tells it PRUNED;
- a cancelled sweep's `sweep.cancelled` event is written once.
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


def evaluated(url: str, sweep_id: uuid.UUID, number: int, losses: dict[int, float]) -> str:
    """Trial `number`'s job logged these evaluations (step -> eval_loss); its id."""
    job = str(
        sql_one(
            url, "SELECT id FROM jobs WHERE sweep_id = %s AND trial_number = %s", sweep_id, number
        )
    )
    for step, loss in losses.items():
        sql(
            url,
            "INSERT INTO job_metrics (job_id, step, kind, values, attempt, recorded_at)"
            " VALUES (%s, %s, 'eval', %s, 1, now())",
            job,
            step,
            psycopg.types.json.Jsonb({"eval_loss": loss}),
        )
    return job


def succeed(url: str, sweep_id: uuid.UUID, number: int, losses: dict[int, float]) -> None:
    job = evaluated(url, sweep_id, number, losses)
    sql(url, "UPDATE jobs SET status = 'succeeded' WHERE id = %s", job)


def test_the_objective_told_is_the_last_evaluation_when_select_is_last(
    database_url: str,
) -> None:
    from db import studies

    url = database_url
    sweep_id, sweep = new_sweep(url, objective={"metric": "eval_loss", "select": "last"})
    assert advance(url, sweep_id)
    succeed(url, sweep_id, 0, {2: 3.0, 4: 2.5, 6: 2.75})
    assert advance(url, sweep_id)
    told = studies.load(sweep_id, sweep, url).get_trials()[0]
    assert told.state.name == "COMPLETE"
    assert told.value == 2.75  # not the best, 2.5 (the default `select`: see the first test)


def test_no_trial_is_asked_after_the_time_budget_and_the_sweep_ends(database_url: str) -> None:
    url = database_url
    sweep_id, _ = new_sweep(url, max_trials=5, time_budget_seconds=3600)
    budget = sql_one(
        url,
        "SELECT extract(epoch FROM deadline_at - created_at) FROM sweeps WHERE id = %s",
        sweep_id,
    )
    assert abs(float(budget) - 3600) < 5  # type: ignore[arg-type]
    assert advance(url, sweep_id)
    assert [n for n, _, _ in trials(url, sweep_id)] == [0, 1]
    # Trial 0 ends within the budget: trial 2 is asked in its place.
    succeed(url, sweep_id, 0, {2: 3.0})
    assert advance(url, sweep_id)
    assert [n for n, _, _ in trials(url, sweep_id)] == [0, 1, 2]

    # The budget is spent (its deadline passed): trials end, none is asked any more.
    sql(url, "UPDATE sweeps SET deadline_at = now() - interval '1 second' WHERE id = %s", sweep_id)
    succeed(url, sweep_id, 1, {2: 2.0})
    assert advance(url, sweep_id)
    assert [n for n, _, _ in trials(url, sweep_id)] == [0, 1, 2]
    assert states(url, sweep_id) == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "running"
    # The last one running ends: the sweep ends with 3 of its 5 trials.
    succeed(url, sweep_id, 2, {2: 2.5})
    assert advance(url, sweep_id)
    assert states(url, sweep_id) == ["COMPLETE"] * 3
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "succeeded"
    assert not advance(url, sweep_id)
    assert len(trials(url, sweep_id)) == 3


def test_a_tpe_sweep_asks_its_trials_from_tpe(database_url: str) -> None:
    """Past TPE's 10 startup trials (random draws), the driver's next trial is the one
    TPE proposes from the completed trials, not a random draw."""
    import math

    import optuna

    from db import studies

    url = database_url
    space = {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}
    sweep_id, sweep = new_sweep(
        url,
        sampler="tpe",
        seed=3,
        max_trials=11,
        search_space={"training_args.learning_rate": space},
    )
    # Ten trials completed (told as the driver tells them), best near 1e-3.
    distribution = distributions(sweep)["training_args.learning_rate"]
    done = [
        optuna.trial.create_trial(
            params={"training_args.learning_rate": lr},
            distributions={"training_args.learning_rate": distribution},
            value=(math.log10(lr) + 3) ** 2,
        )
        for lr in (1e-5, 3e-5, 1e-4, 3e-4, 8e-4, 2e-3, 5e-3, 1e-2, 3e-2, 1e-1)
    ]
    studies.load(sweep_id, sweep, url, asking=False).add_trials(done)

    assert advance(url, sweep_id)
    rows = trials(url, sweep_id)
    assert [n for n, _, _ in rows] == [10]  # the last of the 11
    asked = rows[0][2]["training_args"]["learning_rate"]  # type: ignore[index]
    assert states(url, sweep_id) == ["COMPLETE"] * 10 + ["RUNNING"]

    def proposal(sampler: optuna.samplers.BaseSampler) -> object:
        """What `sampler` asks of the same ten trials, in memory."""
        copy = optuna.create_study(sampler=sampler, direction="minimize")
        copy.add_trials(done)
        return copy.ask(distributions(sweep)).params["training_args.learning_rate"]

    seed = sweep.seed + 10  # the driver's seed for the 11th ask
    assert asked == proposal(optuna.samplers.TPESampler(seed=seed, constant_liar=True))
    assert asked != proposal(optuna.samplers.RandomSampler(seed=seed))


def test_successive_halving_prunes_a_trial_behind_at_its_rung(database_url: str) -> None:
    """The pruning callback of the trials' children (worker/pruning.py), run here against
    the sweep's study: trial 0 completes; trial 1, first at its rung, goes on; trial 2,
    behind trial 1 at the first rung, stops there, and the driver tells it PRUNED."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from db import studies
    from worker.pruning import for_job

    url = database_url
    sweep_id, sweep = new_sweep(url, pruner="successive_halving", max_trials=3)
    assert advance(url, sweep_id)

    def train(number: int, losses: dict[int, float]) -> tuple[int | None, dict[str, object]]:
        """Trial `number`'s evaluations, each through the callback until it stops the
        training; the step it stopped at (None: never) and the job's error if pruned."""
        job = str(
            sql_one(
                url,
                "SELECT id FROM jobs WHERE sweep_id = %s AND trial_number = %s",
                sweep_id,
                number,
            )
        )
        callback = for_job(uuid.UUID(job))
        assert callback is not None
        args = TrainingArguments(output_dir="unused", report_to=[])
        for step, loss in losses.items():
            control = TrainerControl()
            evaluated(url, sweep_id, number, {step: loss})
            callback.on_evaluate(
                args, TrainerState(global_step=step), control, metrics={"eval_loss": loss}
            )
            if control.should_training_stop:
                assert not control.should_save
                error = callback.error()
                sql(
                    url,
                    "UPDATE jobs SET status = 'cancelled', error = %s WHERE id = %s",
                    psycopg.types.json.Jsonb(error),
                    job,
                )
                return step, error
        sql(url, "UPDATE jobs SET status = 'succeeded' WHERE id = %s", job)
        return None, {}

    assert train(0, {2: 3.0, 4: 2.4}) == (None, {})
    assert advance(url, sweep_id)
    assert train(1, {2: 2.0, 4: 1.4}) == (None, {})  # first at each rung
    assert advance(url, sweep_id)
    step, error = train(2, {2: 5.0, 4: 4.0})
    assert step == 2 and error["reason"] == "pruned" and error["step"] == 2
    assert "successive_halving" in str(error["message"])
    assert advance(url, sweep_id)
    assert states(url, sweep_id) == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "succeeded"
    # The rungs successive halving recorded: trial 1 promoted past steps 1 and 4 (the
    # minimum resource is 1: trial 0's last step, 4, over 100), trial 2 stopped at the first.
    rungs = [
        {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung_")}
        for t in studies.load(sweep_id, sweep, url, asking=False).get_trials()
    ]
    assert rungs == [
        {},
        {"completed_rung_0": 2.0, "completed_rung_1": 1.4},
        {"completed_rung_0": 5.0},
    ]


def test_cancelling_a_sweep_emits_sweep_cancelled_once(database_url: str) -> None:
    from db import sweeps
    from db.session import session_scope

    url = database_url
    sweep_id, _ = new_sweep(url)
    sql(
        url,
        "INSERT INTO webhooks (id, tenant, url, events, secret)"
        " VALUES (gen_random_uuid(), 't', 'http://127.0.0.1:9/hook', %s, 'whsec_x')",
        ["sweep.cancelled", "sweep.succeeded"],
    )
    assert advance(url, sweep_id)
    assert [s for _, s, _ in trials(url, sweep_id)] == ["queued", "queued"]
    sql(
        url, "UPDATE jobs SET status = 'running' WHERE sweep_id = %s AND trial_number = 0", sweep_id
    )

    def cancelled_events() -> list[tuple[object, ...]]:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT e.type, e.data -> 'sweep' ->> 'status', count(d.id)"
                " FROM webhook_events e JOIN webhook_deliveries d ON d.event_id = e.id"
                " WHERE e.data -> 'sweep' ->> 'id' = %s GROUP BY e.id ORDER BY e.id",
                (str(sweep_id),),
            ).fetchall()

    with session_scope(url) as session:
        assert sweeps.request_cancel(session=session, sweep_id=sweep_id, by=None)
    assert advance(url, sweep_id)  # the queued trial, cancelled at once, is told
    assert states(url, sweep_id) == ["RUNNING", "FAIL"]  # trial 0 still stopping
    assert cancelled_events() == []
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "cancelling"
    # The running trial stops: the sweep ends `cancelled`, told once.
    sql(url, "UPDATE jobs SET status = 'cancelled' WHERE sweep_id = %s", sweep_id)
    assert advance(url, sweep_id)
    assert cancelled_events() == [("sweep.cancelled", "cancelled", 1)]
    assert not advance(url, sweep_id)
    with session_scope(url) as session:
        assert sweeps.request_cancel(session=session, sweep_id=sweep_id, by=None) == []
    assert not advance(url, sweep_id)
    assert cancelled_events() == [("sweep.cancelled", "cancelled", 1)]
    assert sql_one(url, "SELECT status FROM sweeps WHERE id = %s", sweep_id) == "cancelled"
