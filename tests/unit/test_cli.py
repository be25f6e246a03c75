"""The CLI's bad-input paths: a message and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from traindepot.cli import app
from traindepot.embedded import free_port

runner = CliRunner()


def test_submit_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.output and "Traceback" not in result.output


def test_submit_invalid_json_and_yaml(tmp_path: Path) -> None:
    bad_json = tmp_path / "spec.json"
    bad_json.write_text('{"name": 1')
    result = runner.invoke(app, ["submit", str(bad_json)])
    assert result.exit_code == 2 and "is not valid JSON" in result.output
    bad_yaml = tmp_path / "spec.yaml"
    bad_yaml.write_text("name: [unclosed")
    result = runner.invoke(app, ["submit", str(bad_yaml)])
    assert result.exit_code == 2 and "is not valid YAML" in result.output
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    result = runner.invoke(app, ["submit", str(not_object)])
    assert result.exit_code == 2 and "a job spec is an object" in result.output


def test_unreachable_api_is_a_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["status", "00000000-0000-0000-0000-000000000000", "--url", url])
    assert result.exit_code == 2
    assert "cannot reach the traindepot API" in result.output
    assert "Traceback" not in result.output


def test_parse_sse_reads_events_ids_and_multiline_data() -> None:
    from traindepot.client import parse_sse

    lines = [
        ": ping",
        "event: train",
        "id: 3-5",
        'data: {"step": 1}',
        "",
        "data: first",
        "data:second",
        "",
        "event: end",
        "data: {}",
    ]
    assert list(parse_sse(lines)) == [
        ("train", "3-5", '{"step": 1}'),
        ("message", None, "first\nsecond"),
        ("end", None, "{}"),
    ]


def test_an_invalid_spec_names_each_field(capsys: pytest.CaptureFixture[str]) -> None:
    from traindepot.cli_output import print_api_error

    body = {
        "error": "invalid_request",
        "detail": [{"loc": ["training_args", "learning_rat"], "msg": "unknown field"}],
    }
    print_api_error(422, body)
    assert "training_args.learning_rat: unknown field" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TRAINDEPOT_DATABASE_URL": ""}, "traindepot: TRAINDEPOT_DATABASE_URL is not set"),
        (
            {"TRAINDEPOT_LEASE_SECONDS": "abc"},
            "traindepot: invalid settings: TRAINDEPOT_LEASE_SECONDS='abc': Input should be a"
            " valid number",
        ),
        (
            {"TRAINDEPOT_ADVERTISE_INTERFACE": "nosuch0"},
            "traindepot: TRAINDEPOT_ADVERTISE_INTERFACE='nosuch0': no such network interface"
            " on this machine (it has: ",
        ),
    ],
    ids=["missing", "invalid", "no-such-interface"],
)
def test_a_bad_setting_stops_the_worker_with_a_message(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """`traindepot worker` (the console script's `main`) with a setting it cannot use: exit
    2 and one line naming the setting, before it connects to anything."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TRAINDEPOT_")},
        "TRAINDEPOT_HOME": str(tmp_path),
        # Never reached: the settings are checked first.
        "TRAINDEPOT_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
        "TRAINDEPOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        **settings,
    }
    done = subprocess.run(
        [sys.executable, "-m", "traindepot.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
