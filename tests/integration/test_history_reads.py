"""Issue 13: a long history read back. `GET /jobs/{id}/metrics` samples a history too long
to read whole in the database (first and last step kept, `max_points` respected, the shape
the dashboard reads), and the event stream replays a backlog of many pages complete and in
order (an API with a tiny page, so that a few dozen points take many)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest

from api.routes.history import EXACT_LIMIT
from tests.integration.conftest import Stack
from tests.integration.test_live import read_events

pytestmark = pytest.mark.integration

LONG = EXACT_LIMIT + 5_000  # training points: past the exact path's limit
EVALS = 30
SPIKE_STEP = 12_345


def _job_with_points(stack: Stack, *, steps: int, eval_every: int) -> str:
    """A finished job whose history PostgreSQL writes: a training point per step (loss,
    learning_rate), an evaluation every `eval_every` steps."""
    job_id = uuid.uuid4()
    stack.sql(
        "INSERT INTO jobs (id, name, status, spec, queue, priority, attempt, max_restarts)"
        " VALUES (%s, 'history', 'succeeded', '{}', 'default', 5, 1, 3)",
        job_id,
    )
    stack.sql(
        "INSERT INTO job_metrics (job_id, attempt, step, kind, epoch, values, recorded_at)"
        " SELECT %s, 1, g, 'train', g / 100.0, jsonb_build_object("
        "   'loss', CASE WHEN g = %s::int THEN 50.0 ELSE 3.0 - g / 10000.0 END,"
        "   'learning_rate', 1e-3 - g * 1e-8), now()"
        " FROM generate_series(1, %s::int) AS g"
        " UNION ALL SELECT %s, 1, g, 'eval', g / 100.0,"
        "   jsonb_build_object('eval_loss', 2.0 + g / 100000.0), now()"
        " FROM generate_series(%s::int, %s::int, %s::int) AS g",
        job_id, SPIKE_STEP, steps, job_id, eval_every, steps, eval_every,
    )  # fmt: skip
    return str(job_id)


@pytest.fixture(scope="module")
def long_job(stack: Stack) -> str:
    return _job_with_points(stack, steps=LONG, eval_every=LONG // EVALS)


def test_long_history_is_sampled_in_the_database(stack: Stack, long_job: str) -> None:
    stored = dict(
        stack.sql(
            "SELECT step, (values->>'loss')::float8 FROM job_metrics"
            " WHERE job_id = %s AND kind = 'train'",
            uuid.UUID(long_job),
        )
    )
    # The dashboard's request (api/static/dashboard.html).
    body = stack.http.get(
        f"/jobs/{long_job}/metrics",
        params={"keys": "loss,eval_loss,learning_rate", "max_points": 500},
    ).json()
    assert set(body["series"]) == {"loss", "eval_loss", "learning_rate"}
    loss = body["series"]["loss"]
    assert loss["sampled"] is True and loss["count"] is None
    steps = [step for step, _ in loss["points"]]
    assert 2 <= len(steps) <= 500 and steps == sorted(set(steps))
    assert steps[0] == 1 and steps[-1] == LONG  # the first and the last step kept
    # Each point is the stored value at its step, not an interpolation.
    assert all(value == pytest.approx(stored[step]) for step, value in loss["points"])
    assert body["series"]["learning_rate"]["points"][-1][0] == LONG

    # The evaluations are few: read whole, counted, every one kept.
    evals = body["series"]["eval_loss"]
    assert evals["sampled"] is False and evals["count"] == EVALS
    assert [step for step, _ in evals["points"]] == [
        (n + 1) * (LONG // EVALS) for n in range(EVALS)
    ]

    # max_points bounds the answer and is used: a thousand points spread over the run.
    wide = stack.http.get(f"/jobs/{long_job}/metrics", params={"max_points": 1000}).json()
    wide_steps = [step for step, _ in wide["series"]["loss"]["points"]]
    assert 900 <= len(wide_steps) <= 1000
    assert wide_steps[0] == 1 and wide_steps[-1] == LONG
    assert max(b - a for a, b in itertools.pairwise(wide_steps)) <= 2 * (LONG // 1000)


@pytest.fixture(scope="module")
def small_page_api(stack: Stack) -> Iterator[str]:
    """A second API process whose event streams read their backlog 7 points a page."""
    with stack.extra_api("small-page", {"TRAINDEPOT_SSE_BACKLOG_PAGE": "7"}) as url:
        yield url


def test_backlog_of_many_pages_is_replayed_complete_and_in_order(
    stack: Stack, small_page_api: str
) -> None:
    job_id = _job_with_points(stack, steps=60, eval_every=20)  # 63 points: 9 pages of 7
    stored = stack.sql(
        "SELECT id, step, kind FROM job_metrics WHERE job_id = %s ORDER BY id",
        uuid.UUID(job_id),
    )
    assert len(stored) == 63

    read = read_events(small_page_api, job_id)
    assert read.status_code == 200
    assert [(e.data["id"], e.data["step"], e.event) for e in read.points] == stored
    assert read.events[-1].event == "end" and read.events[-1].data["status"] == "succeeded"

    # Resumed from a point in the middle of a page: the rest, each point once.
    middle = read.points[24]
    rest = read_events(small_page_api, job_id, last_event_id=middle.id)
    assert [e.data["id"] for e in rest.points] == [row[0] for row in stored[25:]]
    assert rest.events[-1].event == "end"


def test_the_metric_keys_a_job_logged_are_read_from_the_ends_of_its_history(
    stack: Stack,
) -> None:
    """`GET /jobs/{id}/metrics/keys` (the dashboard's metric chooser): the numeric keys of
    the job's first and last 1,000 points of each kind, in name order."""
    job_id = _job_with_points(stack, steps=2_500, eval_every=500)
    stack.sql(
        "INSERT INTO job_metrics (job_id, attempt, step, kind, epoch, values, recorded_at)"
        """ VALUES (%s, 1, 2500, 'summary', 25.0, '{"train_runtime": 12.5, "note": "x"}', now())""",
        uuid.UUID(job_id),
    )
    # A key logged once, in the middle of the training points: not read (a bounded read).
    stack.sql(
        """UPDATE job_metrics SET values = values || '{"middle_only": 1.0}'"""
        " WHERE job_id = %s AND kind = 'train' AND step = 1250",
        uuid.UUID(job_id),
    )
    response = stack.http.get(f"/jobs/{job_id}/metrics/keys")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "job_id": job_id,
        "keys": ["eval_loss", "learning_rate", "loss", "train_runtime"],
    }
    # Each is a key of the history route.
    series = stack.http.get(f"/jobs/{job_id}/metrics?keys=train_runtime").json()["series"]
    assert series["train_runtime"]["points"] == [[2500, 12.5]]
    # Another tenant's key does not see the job; an unknown job is a 404 too.
    other = stack.headers(stack.new_key("keys-tenant"))
    assert stack.http.get(f"/jobs/{job_id}/metrics/keys", headers=other).status_code == 404
    assert stack.http.get(f"/jobs/{uuid.uuid4()}/metrics/keys").status_code == 404
