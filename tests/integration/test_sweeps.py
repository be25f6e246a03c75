"""Issue 26: hyperparameter sweeps whose trials are ordinary jobs (db/sweeps.py), on the real
stack: a worker of 2 CPU slots of its own (queue `sweeps`), real Optuna studies in the
stack's PostgreSQL (schema `optuna`).

- bad sweeps are 422s that name the path: a space over an unknown field, a log low of 0, a
  categorical of mixed types, `max_concurrent_trials` over the tenant's running quota, a
  value at an end of the space that the spec rules refuse;
- with 2 slots and `max_concurrent_trials` 2, two trials run at once and never three (a
  third waits queued: the claim holds the cap), shown in Prometheus' `/metrics` like any
  job; cancelling the sweep leaves no trial queued or running and none RUNNING in the study;
- the median pruner stops the bad trials at the evaluation that decided it (nothing saved
  after it, `cancelled` with reason `pruned`, partial TrainOutput kept); the best trial's
  model downloads from the sweep; "retrain with best params" is one call; with
  `load_best_model_at_end` that model holds the best checkpoint's weights, not the last;
- a worker SIGKILLed mid-sweep, twice, loses no trial: the study's trials equal the jobs,
  none stays RUNNING, the sweep ends, and a resumed trial's losses equal those of its spec
  run uninterrupted.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import torch

from tests.integration.conftest import Stack
from tests.integration.test_cli import cli
from tests.integration.test_prometheus import scrape, value
from tests.integration.test_webhooks import Receiver, wait_for
from tests.specs import tiny_spec

pytestmark = pytest.mark.integration

QUEUE = "sweeps"
# The fault test's workers, apart from the 2-slot worker of the module.
KILL_QUEUE = "sweeps-kill"


def base_spec(**training_args: Any) -> dict[str, Any]:
    """A tiny causal LM that evaluates every 2 steps on a held-out fifth of its rows."""
    return tiny_spec(
        name="sweep-base",
        queue=QUEUE,
        dataset={"eval_fraction": 0.25},
        training_args={
            "max_steps": 8,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "logging_steps": 2,
            **training_args,
        },
    )


def sweep_body(*, queue: str = QUEUE, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "lr-sweep",
        "base": base_spec(),
        "search_space": {
            "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
        },
        "sampler": "random",
        "max_trials": 4,
        "max_concurrent_trials": 2,
    }
    body.update(overrides)
    body["base"] = {**body["base"], "queue": queue}
    return body


@pytest.fixture(scope="module")
def slots2(stack: Stack) -> Iterator[Stack]:
    """The session stack with a worker of 2 CPU slots on the `sweeps` queue."""
    with stack.extra_worker("sweeps", queues=QUEUE, args=("--slots", "2")):
        yield stack


def submit(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = stack.http.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    doc: dict[str, Any] = response.json()
    return doc


def wait_sweep(stack: Stack, sweep_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = stack.http.get(f"/sweeps/{sweep_id}").json()
        if doc["status"] in ("succeeded", "cancelled"):
            return doc
        assert time.monotonic() < deadline, f"sweep still {doc['status']}: {doc}"
        time.sleep(0.3)


def trial_statuses(stack: Stack, sweep_id: str) -> list[str]:
    rows = stack.sql(
        "SELECT status FROM jobs WHERE sweep_id = %s ORDER BY trial_number", uuid.UUID(sweep_id)
    )
    return [str(r[0]) for r in rows]


def study_states(stack: Stack, sweep_id: str) -> list[str]:
    rows = stack.sql(
        "SELECT t.state FROM optuna.trials t JOIN optuna.studies s USING (study_id)"
        " WHERE s.study_name = %s ORDER BY t.number",
        f"sweep-{sweep_id}",
    )
    return [str(r[0]) for r in rows]


def problems(response: Any) -> list[tuple[list[Any], str]]:
    assert response.status_code == 422, response.text
    return [(p["loc"], p["type"]) for p in response.json()["detail"]]


def test_bad_sweeps_are_422s_naming_the_path(stack: Stack) -> None:
    http = stack.http
    lr = "training_args.learning_rate"
    sweeps_before = stack.sql("SELECT count(*) FROM sweeps")

    unknown = sweep_body(
        search_space={"training_args.learnin_rate": {"type": "float", "low": 0.1, "high": 1}}
    )
    assert (["search_space", "training_args.learnin_rate"], "unknown_field") in problems(
        http.post("/sweeps", json=unknown)
    )
    log_zero = sweep_body(search_space={lr: {"type": "float", "low": 0, "high": 1, "log": True}})
    assert (["search_space", lr, "low"], "log_low_not_positive") in problems(
        http.post("/sweeps", json=log_zero)
    )
    mixed = sweep_body(
        search_space={
            "training_args.per_device_train_batch_size": {
                "type": "categorical",
                "choices": [2, "4"],
            }
        }
    )
    assert (
        ["search_space", "training_args.per_device_train_batch_size", "choices"],
        "choices_mixed_types",
    ) in problems(http.post("/sweeps", json=mixed))
    # The default running quota of a tenant is 8 jobs at once.
    assert (["max_concurrent_trials"], "over_quota") in problems(
        http.post("/sweeps", json=sweep_body(max_concurrent_trials=9))
    )
    # An end of the space that the spec's rules refuse: a batch of 0.
    zero_batch = sweep_body(
        search_space={
            "training_args.per_device_train_batch_size": {"type": "int", "low": 0, "high": 4}
        }
    )
    found = problems(http.post("/sweeps", json=zero_batch))
    assert [loc for loc, _ in found] == [
        ["search_space", "training_args.per_device_train_batch_size"]
    ]
    # A base spec that never evaluates has no objective.
    no_eval = sweep_body(base=tiny_spec(queue=QUEUE))
    assert (["objective", "metric"], "no_evaluation") in problems(
        http.post("/sweeps", json=no_eval)
    )
    assert stack.sql("SELECT count(*) FROM sweeps") == sweeps_before
    # The CLI: exit 2, each problem named by its path.
    path = stack.home / "bad-sweep.json"
    path.write_text(json.dumps(log_zero))
    refused = cli(stack, "sweep", "submit", str(path))
    assert refused.returncode == 2
    assert f"search_space.{lr}.low: a log distribution needs low > 0" in refused.stderr


def test_two_trials_run_at_once_never_three_and_cancel_stops_them_all(slots2: Stack) -> None:
    stack = slots2
    body = sweep_body(
        base=base_spec(max_steps=100_000, eval_steps=50, logging_steps=10),
        max_trials=6,
        max_concurrent_trials=2,
    )
    sweep = submit(stack, body)
    sweep_id = sweep["id"]
    most = 0
    deadline = time.monotonic() + 120
    statuses = trial_statuses(stack, sweep_id)
    while statuses.count("running") < 2:
        most = max(most, statuses.count("running"))
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)
        statuses = trial_statuses(stack, sweep_id)
    # Both slots busy, and a third trial asked ahead, queued: the claim, not the driver,
    # keeps it waiting.
    assert statuses.count("queued") == 1
    for _ in range(30):
        statuses = trial_statuses(stack, sweep_id)
        most = max(most, statuses.count("running"))
        time.sleep(0.1)
    assert most == 2 and statuses.count("queued") == 1
    # Trials show in Prometheus like any job: the running ones, by id, name and queue.
    running = {
        str(job_id): name
        for job_id, name in stack.sql(
            "SELECT id, name FROM jobs WHERE sweep_id = %s AND status = 'running'",
            uuid.UUID(sweep_id),
        )
    }
    assert len(running) == 2
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(stack.http)
        steps = {
            s.labels["job_id"]: s.labels
            for s in samples
            if s.name == "traindepot_job_global_step" and s.labels["job_id"] in running
        }
        if len(steps) == 2:
            break
        assert time.monotonic() < deadline, steps
        time.sleep(0.5)
    for job_id, labels in steps.items():
        assert labels["name"] == running[job_id] and labels["queue"] == QUEUE
    assert value(samples, "traindepot_jobs", queue=QUEUE, status="running") == 2
    assert value(samples, "traindepot_jobs", queue=QUEUE, status="queued") == 1

    response = stack.http.post(f"/sweeps/{sweep_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] in ("cancelling", "cancelled"), response.json()
    doc = wait_sweep(stack, sweep_id, timeout=120)
    assert doc["status"] == "cancelled"
    statuses = trial_statuses(stack, sweep_id)
    assert "queued" not in statuses and "running" not in statuses
    assert set(statuses) == {"cancelled"}
    states = study_states(stack, sweep_id)
    assert len(states) == len(statuses) and "RUNNING" not in states
    assert stack.http.post(f"/sweeps/{sweep_id}/cancel").status_code == 409


def test_the_median_pruner_stops_bad_trials_and_the_best_model_downloads(slots2: Stack) -> None:
    stack = slots2
    receiver = Receiver()
    hook = stack.http.post(
        "/webhooks",
        json={"url": receiver.url(), "events": ["sweep.trial_ended", "sweep.succeeded"]},
    )
    assert hook.status_code == 201, hook.text
    try:
        pruned_sweep_and_its_best_model(stack, receiver)
    finally:
        stack.http.delete(f"/webhooks/{hook.json()['id']}")
        receiver.close()


def pruned_sweep_and_its_best_model(stack: Stack, receiver: Receiver) -> None:
    # The grid's order for seed 0 and 4 points is points 2, 3, 1, 0: two good learning
    # rates complete first (the better one second), then two that barely learn are pruned
    # at their first evaluation against the median of the completed ones.
    body = sweep_body(
        search_space={
            "training_args.learning_rate": {
                "type": "categorical",
                "choices": [1e-7, 2e-7, 5e-3, 1e-2],
            }
        },
        sampler="grid",
        pruner="median",
        max_trials=10,  # the grid's 4 points
        max_concurrent_trials=1,
    )
    sweep = submit(stack, body)
    assert sweep["max_trials"] == 4
    doc = wait_sweep(stack, sweep["id"])
    assert doc["status"] == "succeeded"
    states = {t["number"]: t["state"] for t in doc["trials"]}
    assert states == {0: "complete", 1: "complete", 2: "pruned", 3: "pruned"}
    for trial in doc["trials"]:
        job = stack.get(trial["job_id"])
        if trial["state"] == "pruned":
            assert job["status"] == "cancelled"
            assert job["error"]["reason"] == "pruned"
            step = job["error"]["step"]
            # Stopped at the evaluation that decided it: no step trained after it, the
            # partial TrainOutput kept, no model and no checkpoint saved.
            assert job["result"]["global_step"] == step == 2
            assert max(stack.train_steps(trial["job_id"]) or [0]) <= step
            assert not (stack.job_dir(trial["job_id"]) / "model").exists()
        else:
            assert job["status"] == "succeeded"
            assert trial["value"] == min(trial["intermediate"].values())
    best = doc["best"]
    assert best["number"] == 1
    # Trials 1..3 loaded the data trial 0 prepared (the searched field does not change it;
    # trial 0 found it cached already when another sweep of this module ran first).
    logs = [(stack.job_dir(t["job_id"]) / "train.log").read_text() for t in doc["trials"]]
    assert "prepared data saved to the cache" in logs[0] or "from the cache" in logs[0]
    assert all("prepared data from the cache" in log for log in logs[1:])
    assert best["value"] == min(t["value"] for t in doc["trials"] if t["value"] is not None)

    # The event stream of an ended sweep: its document, then the end.
    with stack.http.stream("GET", f"/sweeps/{sweep['id']}/events") as stream:
        lines = [line for line in stream.iter_lines() if line.startswith(("event:", "data:"))]
    assert [line for line in lines if line.startswith("event:")] == ["event: sweep", "event: end"]
    assert json.loads(lines[1].removeprefix("data: "))["best"] == best

    # The CLI reads the same: `sweep best` prints it; `sweep status` lists the trials.
    best_cli = cli(stack, "sweep", "best", sweep["id"])
    assert best_cli.returncode == 0, best_cli.stderr
    assert json.loads(best_cli.stdout) == best
    status_cli = cli(stack, "sweep", "status", sweep["id"])
    assert status_cli.returncode == 0 and "pruned" in status_cli.stdout

    tar = stack.http.get(f"/sweeps/{sweep['id']}/model.tar")
    assert tar.status_code == 200
    own = stack.http.get(f"/jobs/{best['job_id']}/model.tar")
    assert tar.content == own.content
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert "model/manifest.json" in archive.getnames()

    retrain = stack.http.post(f"/sweeps/{sweep['id']}/retrain")
    assert retrain.status_code == 201, retrain.text
    job = retrain.json()
    assert (
        job["spec"]["training_args"]["learning_rate"]
        == best["params"]["training_args.learning_rate"]
    )
    assert job["spec"]["tags"]["retrained_from_sweep"] == sweep["id"]
    assert stack.wait(job["id"])["status"] == "succeeded"
    # The retrained job prepared its data itself (it is no trial): its losses are the best
    # trial's, which read the cached data, bit for bit.
    assert "prepared data" not in (stack.job_dir(job["id"]) / "train.log").read_text()
    assert stack.train_losses(job["id"]) == stack.train_losses(best["job_id"])
    again, trial = stack.get(job["id"])["result"], stack.get(best["job_id"])["result"]
    assert again["training_loss"] == trial["training_loss"]

    # The tenant's subscription heard each trial told once, then the sweep's end, signed.
    def of_sweep() -> list[dict[str, Any]]:
        return [r.event for r in receiver.received if r.event["data"]["sweep"]["id"] == sweep["id"]]

    heard = wait_for("the sweep's events", lambda: len(of_sweep()) >= 5 and of_sweep())
    assert sorted(e["type"] for e in heard) == ["sweep.succeeded"] + ["sweep.trial_ended"] * 4
    told = sorted((e["data"]["trial"] or {}).get("number", -1) for e in heard)
    assert told == [-1, 0, 1, 2, 3]
    ended = [e["data"]["trial"] for e in heard if e["type"] == "sweep.trial_ended"]
    states = {t["number"]: t["state"] for t in ended}
    assert states == {0: "complete", 1: "complete", 2: "pruned", 3: "pruned"}


def test_the_best_model_is_the_best_checkpoints_with_load_best_model_at_end(
    slots2: Stack,
) -> None:
    """`load_best_model_at_end` in the base spec: the sweep's model.tar holds the weights of
    its best trial's best checkpoint, not its last ones. "Best" is the *highest* eval loss
    here, so that the best checkpoint is the first (the loss falls as a fresh model trains)."""
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import load_file

    stack = slots2
    base = base_spec(
        save_strategy="steps",
        save_steps=2,
        learning_rate=3e-3,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
    )
    sweep = submit(
        stack,
        sweep_body(
            base=base,
            search_space={"training_args.seed": {"type": "categorical", "choices": [5]}},
            sampler="grid",
            max_trials=1,
            max_concurrent_trials=1,
        ),
    )
    doc = wait_sweep(stack, sweep["id"])
    assert doc["status"] == "succeeded" and doc["best"] is not None
    job_id = doc["best"]["job_id"]
    listing = stack.http.get(f"/jobs/{job_id}/artifacts").json()
    assert listing["best_checkpoint"].endswith("checkpoint-2")
    tar = stack.http.get(f"/sweeps/{sweep['id']}/model.tar")
    assert tar.status_code == 200, tar.text
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        member = archive.extractfile("model/model.safetensors")
        assert member is not None
        served = load_safetensors(member.read())
    output = stack.job_dir(job_id) / "output"
    best = load_file(str(output / "checkpoint-2" / "model.safetensors"))
    last = load_file(str(output / "checkpoint-8" / "model.safetensors"))
    assert served.keys() == best.keys()
    assert all(torch.equal(served[k], best[k]) for k in best)
    assert not all(torch.equal(served[k], last[k]) for k in last)


def test_a_worker_killed_twice_mid_sweep_loses_no_trial(stack: Stack) -> None:
    """Each worker is killed while a trial of its trains; the next one is already up (it
    cannot take the trial waiting ahead: the cap is 1) and takes the reaped trial."""
    sweep = submit(
        stack,
        sweep_body(
            # 480 steps: on a fast machine a trial of 48 trained to its end before the kill
            # (a step took 6 ms), and nothing was left to resume.
            base=base_spec(
                max_steps=480,
                save_strategy="steps",
                save_steps=40,
                eval_steps=240,
                logging_steps=40,
            ),
            queue=KILL_QUEUE,
            max_trials=2,
            max_concurrent_trials=1,
        ),
    )
    sweep_id = sweep["id"]
    with ExitStack() as workers:
        live = [workers.enter_context(stack.extra_worker("sweeps-kill-0", queues=KILL_QUEUE))]
        for kill in range(2):
            # A spare worker first, so that the kill follows the check at once; it cannot
            # take the trial waiting ahead (the cap is 1), and one of them takes the reaped
            # trial. Whichever live worker runs a trial is the one killed.
            live.append(
                workers.enter_context(
                    stack.extra_worker(f"sweeps-kill-{kill + 1}", queues=KILL_QUEUE)
                )
            )

            # A trial has logged twice in this attempt on a live worker (a killed one's
            # stays `running` until its lease runs out): its step-80 point is logged after
            # checkpoint-40 was saved (the Trainer logs, then saves), so the kill lands with
            # a checkpoint to resume from, and most steps still to go.
            def runs_a_trial() -> list[subprocess.Popen[bytes]]:
                owners = stack.sql(
                    "SELECT j.lease_owner FROM jobs j WHERE j.sweep_id = %s"
                    " AND j.status = 'running' AND (SELECT count(*) FROM job_metrics m"
                    " WHERE m.job_id = j.id AND m.attempt = j.attempt AND m.kind = 'train') >= 2",
                    uuid.UUID(sweep_id),
                )
                return [w for w in live for (owner,) in owners if owner.endswith(f":{w.pid}")]

            deadline = time.monotonic() + 180
            while not (running := runs_a_trial()):
                assert time.monotonic() < deadline, trial_statuses(stack, sweep_id)
                time.sleep(0.05)
            (victim,) = running
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            live.remove(victim)
        doc = wait_sweep(stack, sweep_id, timeout=300)
        assert doc["status"] == "succeeded"
        statuses = trial_statuses(stack, sweep_id)
        states = study_states(stack, sweep_id)
        assert len(states) == len(statuses) == 2
        assert "RUNNING" not in states
        assert set(statuses) == {"succeeded"} and set(states) == {"COMPLETE"}
        resumed = stack.sql(
            "SELECT DISTINCT j.id, j.spec FROM job_attempts a JOIN jobs j ON j.id = a.job_id"
            " WHERE j.sweep_id = %s AND a.resumed_from_step IS NOT NULL",
            uuid.UUID(sweep_id),
        )
        assert len(resumed) >= 1
        # Each resumed trial logged the losses of its spec run uninterrupted, bit for bit:
        # the same spec (its parameters) submitted again as a plain job, no worker killed.
        references = {}
        for trial_id, spec in resumed:
            tags = {k: v for k, v in spec["tags"].items() if k not in ("sweep", "trial")}
            references[str(trial_id)] = stack.submit(
                {**spec, "name": "uninterrupted", "tags": tags}
            )
        for trial_id, reference in references.items():
            assert stack.wait(reference["id"], timeout=180)["status"] == "succeeded"
            losses = stack.train_losses(trial_id)
            assert [step for step, _ in losses] == list(range(40, 481, 40))
            assert losses == stack.train_losses(reference["id"])
