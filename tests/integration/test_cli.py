"""The CLI against a real server, as a user runs it (a subprocess, URL and key from the
environment): submit --follow, a failing job, logs --follow, events, wait, validate, a bad
spec file, download, and the offline example validated by POST /jobs/validate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import TERMINAL, Stack
from tests.specs import tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ready")]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli(stack: Stack, *args: str, terminal: bool = False) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess; `terminal`: rich draws as on an interactive terminal (live
    redraws of the progress bar), as a user sees it."""
    env = {**stack.env, "TRAINDEPOT_URL": stack.url, "COLUMNS": "200"}
    if terminal:
        env.update({"TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1"})
    return subprocess.run(
        [sys.executable, "-m", "traindepot.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def spec_file(tmp_path: Path, spec: dict[str, Any], name: str = "spec.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def test_submit_follow_shows_progress_and_the_train_output(stack: Stack, tmp_path: Path) -> None:
    spec = tiny_spec(name="cli-follow", training_args={"max_steps": 300})
    done = cli(stack, "submit", spec_file(tmp_path, spec), "--follow", terminal=True)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0].strip()
    assert stack.get(job_id)["status"] == "succeeded"
    # The progress bar (on stderr), redrawn as the job trains: steps done of the total, the
    # loss, the ETA while it runs.
    steps = {int(n) for n in re.findall(r"(\d+)/300", done.stderr)}
    assert 300 in steps and any(0 < n < 300 for n in steps), steps
    assert re.search(r"loss \d+\.\d{4}", done.stderr)
    assert re.search(r"ETA \d+s", done.stderr)
    # The TrainOutput table (on stdout).
    assert "succeeded" in done.stdout and "TrainOutput" in done.stdout
    assert "global_step" in done.stdout and "metrics.train_runtime" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_failing_job_exits_non_zero_with_its_error(stack: Stack, tmp_path: Path) -> None:
    spec = tiny_spec(name="cli-fails", dataset={"rows": [{"body": "hello"}] * 4})
    done = cli(stack, "submit", spec_file(tmp_path, spec), "--follow")
    assert done.returncode == 1
    job_id = done.stdout.splitlines()[0].strip()
    assert stack.get(job_id)["status"] == "failed"
    assert "failed" in done.stdout
    assert "DataError" in done.stderr and "Traceback (most recent call last)" in done.stderr
    # `wait` on the same job says the same, with the same exit status.
    waited = cli(stack, "wait", job_id)
    assert waited.returncode == 1 and "DataError" in waited.stderr


def test_logs_follow_streams_until_the_end(stack: Stack) -> None:
    job = stack.submit(tiny_spec(name="cli-logs", training_args={"max_steps": 40}))
    done = cli(stack, "logs", job["id"], "--follow")
    assert done.returncode == 0, done.stderr
    # It returned because the job ended, and it printed the log up to the end.
    assert stack.get(job["id"])["status"] in TERMINAL
    logged = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert any(entry.get("step") == 40 for entry in logged), done.stdout[-2000:]


def test_events_and_wait_follow_a_job_to_its_end(stack: Stack) -> None:
    job = stack.submit(tiny_spec(name="cli-events"))
    events = cli(stack, "events", job["id"])
    assert events.returncode == 0, events.stderr
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds.count("train") == 6 and kinds[-1] == "end"
    assert lines[-1]["data"]["status"] == "succeeded"
    waited = cli(stack, "wait", job["id"])
    assert waited.returncode == 0 and "succeeded" in waited.stdout


def test_a_bad_spec_file_exits_2_naming_the_field(stack: Stack, tmp_path: Path) -> None:
    spec = tiny_spec(name="cli-bad")
    spec["training_args"]["learning_rat"] = 0.1
    for command in ("submit", "validate"):
        done = cli(stack, command, spec_file(tmp_path, spec))
        assert done.returncode == 2, done
        assert "training_args.learning_rat" in done.stderr
        assert "Traceback" not in done.stderr
    assert not stack.sql("SELECT id FROM jobs WHERE name = 'cli-bad'")


def test_validate_prints_the_effective_training_arguments(stack: Stack) -> None:
    done = cli(stack, "validate", str(EXAMPLES / "tiny-offline.json"))
    assert done.returncode == 0, done.stderr
    assert "the spec is valid" in done.stdout
    # The spec's own values, and the library's defaults it did not set.
    assert "max_steps" in done.stdout and "12" in done.stdout
    assert "lr_scheduler_type" in done.stdout and "linear" in done.stdout


def test_the_offline_example_is_valid_for_the_server(stack: Stack) -> None:
    spec = json.loads((EXAMPLES / "tiny-offline.json").read_text())
    response = stack.http.post("/jobs/validate", json=spec)
    assert response.status_code == 200, response.text
    assert response.json()["training_args"]["max_steps"] == 12


def test_download_of_a_job_without_a_model_is_a_clear_error(stack: Stack, tmp_path: Path) -> None:
    done = cli(stack, "download", str(uuid.uuid4()), str(tmp_path / "model"))
    assert done.returncode == 1
    assert "has no model to download" in done.stderr and "Traceback" not in done.stderr


def test_download_unpacks_the_final_model(stack: Stack, tmp_path: Path) -> None:
    job = stack.submit(tiny_spec(name="cli-download"))
    assert stack.wait(job["id"])["status"] == "succeeded"
    target = tmp_path / "model"
    done = cli(stack, "download", job["id"], str(target))
    assert done.returncode == 0, done.stderr
    assert any(target.rglob("config.json")), sorted(target.rglob("*"))
