"""The training child runs in the job's directory, not in the worker's: a directory of the
worker's that is named like a Hub model is never loaded in its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import Stack
from tests.specs import TINY_GPT2, tiny_spec

pytestmark = pytest.mark.integration

QUEUE = "elsewhere"
MODEL = "cwd-probe-model"  # a valid Hub id, and a directory in the worker's cwd


def test_child_runs_in_the_job_directory(stack: Stack, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**{k: v for k, v in TINY_GPT2.items() if k != "model_type"})
    GPT2LMHeadModel(config).save_pretrained(tmp_path / MODEL)
    with stack.extra_worker("elsewhere", queues=QUEUE, cwd=tmp_path):
        # The project imports from any directory: a job trains.
        trained = stack.submit(tiny_spec(name="cwd-imports", queue=QUEUE))
        done = stack.wait(trained["id"])
        assert done["status"] == "succeeded", done["error"]

        # `from_pretrained(MODEL)` in the worker's directory would load ./cwd-probe-model;
        # in the job's directory, offline, there is no such model.
        spec = tiny_spec(name="cwd-probe", queue=QUEUE)
        spec["model"] = {"name_or_path": MODEL}
        probe = stack.submit(spec)
        done = stack.wait(probe["id"])
        assert done["status"] == "failed"
        assert done["error"]["reason"] == "config", done["error"]
        assert "couldn't find them" in done["error"]["message"], done["error"]
