"""Issue 4: guards. A non-finite loss fails fast, a time limit stops like a cancel, and
build errors are classified."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Stack
from tests.specs import TINY_GPT2, tiny_spec
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration


def test_nan_loss_fails_fast_with_its_step(stack: Stack) -> None:
    # A learning rate this large sends the weights to inf/NaN within a couple of steps.
    spec = tiny_spec(name="nan", training_args={"learning_rate": 1e20, "max_steps": 500})
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    error = done["error"]
    assert error["reason"] == "non_finite_loss", error
    assert error["type"] == "NonFiniteLossError"
    step = error["step"]
    assert step >= 1
    assert f"step {step}" in error["message"]
    # Fast: training stopped at the step that went non-finite.
    assert max(stack.train_steps(job["id"])) == step
    assert done["progress"]["global_step"] == step


def test_time_limit_stops_with_checkpoint_and_fails_timeout(stack: Stack) -> None:
    spec = tiny_spec(
        name="time-limit",
        training_args={"max_steps": 1_000_000, "save_strategy": "no"},
        limits={"max_runtime_seconds": 25, "max_restarts": 3},
    )
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["reason"] == "timeout"
    assert done["error"]["type"] == "TimeoutError"
    result = done["result"]  # the partial TrainOutput is kept
    assert result is not None and 0 < result["global_step"] < 1_000_000
    checkpoint = stack.job_dir(job["id"]) / "output" / f"checkpoint-{result['global_step']}"
    assert is_complete(checkpoint)


def test_bad_model_config_is_classified_config(stack: Stack) -> None:
    # Valid as a spec; the model cannot be built (n_embd not divisible by n_head).
    spec = tiny_spec(
        name="bad-config", model={"from_config": {**TINY_GPT2, "n_embd": 30, "n_head": 4}}
    )
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "failed"
    assert done["error"]["reason"] == "config", done["error"]
    assert done["result"] is None
