"""A recipe from outside the project (examples/text-regression-recipe): installed as a
package, found through the `traindepot.recipes` entry points by the API, the worker and its
warm-start template, shown in `/openapi.json` with its own fields, and trained by a job.

The package is installed into a directory of this module's own and put on the PYTHONPATH of
this module's stack only: the other tests (and this test process) never see the recipe.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack, session_database_stack

pytestmark = pytest.mark.integration

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "text-regression-recipe"


@pytest.fixture(scope="module")
def plugin_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    target = tmp_path_factory.mktemp("recipes")
    # Built from a copy: setuptools writes `build/` and `*.egg-info` beside the sources.
    source = tmp_path_factory.mktemp("source") / PACKAGE.name
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        cwd=source,
    )  # fmt: skip
    # The warm-start template is on: the forked child must know the recipe too.
    settings = {"PYTHONPATH": str(target), "TRAINDEPOT_WARM_START": "true"}
    with session_database_stack(tmp_path_factory, "plugin", settings) as stack:
        yield stack


def regression_spec() -> dict[str, Any]:
    # The number is the text's length: learnable from the byte tokens.
    rows = [{"text": "ab" * n, "score": n / 4} for n in range(1, 25)]
    return {
        "name": "plugin-regression",
        "task": "text-regression",
        "model": {"from_config": {"model_type": "bert", "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "hidden_size": 32,
                                  "intermediate_size": 64, "max_position_embeddings": 64}},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": rows, "target_column": "score", "eval_fraction": 0.25},
        "preprocessing": {"max_length": 56, "padding": "longest"},
        "training_args": {"max_steps": 12, "per_device_train_batch_size": 6,
                          "learning_rate": 3e-3, "eval_strategy": "steps", "eval_steps": 6,
                          "logging_steps": 1, "save_strategy": "no", "use_cpu": True,
                          "seed": 3},
    }  # fmt: skip


def test_the_plugin_recipe_is_in_the_openapi_document(plugin_stack: Stack) -> None:
    doc = plugin_stack.http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    mapping = schemas["JobSpec"]["discriminator"]["mapping"]
    assert {"causal-lm", "sequence-classification", "text-regression"} <= set(mapping)
    spec_schema = schemas[mapping["text-regression"].rsplit("/", 1)[-1]]
    dataset = schemas[spec_schema["properties"]["dataset"]["$ref"].rsplit("/", 1)[-1]]
    assert dataset["properties"]["target_column"]["default"] == "target"
    body = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    example = body["examples"]["text-regression"]["value"]
    assert plugin_stack.http.post("/jobs/validate", json=example).status_code == 200


def test_the_plugin_recipe_checks_its_spec(plugin_stack: Stack) -> None:
    spec = regression_spec()
    spec["dataset"] = {**spec["dataset"], "target_column": "text"}
    response = plugin_stack.http.post("/jobs/validate", json=spec)
    assert response.status_code == 422
    assert [p["loc"] for p in response.json()["detail"]] == [["dataset", "target_column"]]
    # Its own field on another task names the task it belongs to.
    dataset = {"rows": [{"text": "a"}], "target_column": "y"}
    args = {"max_steps": 2, "use_cpu": True}
    other = {**spec, "task": "causal-lm", "dataset": dataset, "training_args": args}
    response = plugin_stack.http.post("/jobs/validate", json=other)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["dataset", "target_column"] and "text-regression" in problem["msg"]


def test_a_job_trains_with_the_plugin_recipe(plugin_stack: Stack) -> None:
    job_id = plugin_stack.submit(regression_spec())["id"]
    job = plugin_stack.wait(job_id, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    log = (plugin_stack.job_dir(job_id) / "train.log").read_text()
    assert "warm start" in log.splitlines()[0]  # the template knew the recipe
    series = plugin_stack.http.get(
        f"/jobs/{job_id}/metrics", params={"keys": "eval_mse,eval_mae"}
    ).json()["series"]
    mse = [value for _, value in series["eval_mse"]["points"]]
    assert len(mse) == 2 and "eval_mae" in series
    assert mse[-1] < mse[0]  # it learns: the last evaluation's error is below the first's
    model = plugin_stack.job_dir(job_id) / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
    assert "target column: `score`" in (model / "README.md").read_text()
