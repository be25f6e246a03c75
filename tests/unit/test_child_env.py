"""The training child's environment carries the settings it reads, and no secret but its
own job's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet

from traindepot.settings import Settings
from worker import warm
from worker.child_env import child_environment, training_environment
from worker.supervisor import Supervisor


def test_every_flusher_setting_reaches_the_training_child() -> None:
    """The flusher runs in the training child (worker/runner.py `new_flusher`): a
    `TRAINDEPOT_FLUSH_*` setting the allowlist dropped would be silently ignored there
    (TRAINDEPOT_FLUSH_LEADING_EDGE=false was)."""
    names = [
        f"TRAINDEPOT_{field.upper()}"
        for field in Settings.model_fields
        if field.startswith("flush_")
    ]
    assert "TRAINDEPOT_FLUSH_LEADING_EDGE" in names
    environ = {name: "1" for name in names} | {"AWS_SECRET_ACCESS_KEY": "x"}
    assert child_environment(environ, {}) == {name: "1" for name in names}


def test_the_workers_own_secrets_never_reach_a_child_or_a_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The environment every training child and every warm-start template is started with
    (`training_environment`) leaves out the key that decrypts tenant secrets, the API keys'
    hash key and the store's credentials, all of which the worker holds."""
    held = {
        "TRAINDEPOT_SECRETS_KEY": Fernet.generate_key().decode(),
        "TRAINDEPOT_SECRET_KEY": "the-api-keys-hash-key",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "session",
    }
    for name, value in held.items():
        monkeypatch.setenv(name, value)
    env = training_environment(Settings(home=tmp_path))
    assert not set(held) & set(env)
    assert not set(held.values()) & set(env.values())


def test_a_jobs_hub_token_goes_to_its_child_only_never_to_the_template(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """worker/supervisor.py: the template is started with `_child_env()` (the job's devices,
    no secret), and the job's secrets reach only its own child: the variables the warm fork
    sets after it is made, or a cold child's environment."""
    token = "hf_scope_test_token"
    monkeypatch.delenv("HF_TOKEN", raising=False)  # none given to the worker by its operator
    supervisor = Supervisor(
        job_id=uuid.uuid4(),
        attempt=1,
        settings=Settings(home=tmp_path),
        devices_env={"CUDA_VISIBLE_DEVICES": "0"},
        secrets_env={"HF_TOKEN": token},
    )
    for_template = supervisor._child_env()
    assert for_template["CUDA_VISIBLE_DEVICES"] == "0"
    assert token not in for_template.values() and "HF_TOKEN" not in for_template

    forked: list[dict[str, Any]] = []

    def start(prepared: object, **request: Any) -> object:
        forked.append(request)
        return object()

    monkeypatch.setattr(warm.starter, "start", start)
    prepared = cast(warm.Prepared, object())
    log_path = tmp_path / "train.log"
    with log_path.open("ab") as log_file:
        assert supervisor._start_warm(prepared, log_path, log_file)
    assert forked[0]["job_env"] == {"CUDA_VISIBLE_DEVICES": "0", "HF_TOKEN": token}

    # A job without `hub` (or of a tenant whose token it is not) has no secrets_env.
    plain = Supervisor(job_id=uuid.uuid4(), attempt=1, settings=Settings(home=tmp_path))
    with log_path.open("ab") as log_file:
        assert plain._start_warm(prepared, log_path, log_file)
    assert forked[1]["job_env"] == {}
