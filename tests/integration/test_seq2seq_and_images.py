"""Issue 25: the `seq2seq` and `image-classification` recipes through the real service, one
job each on data the tests generate, checked the ways test_tagging_and_qa.py checks the
other two recipes:

- against a plain script after the transformers task guide (plain_seq2seq.py,
  plain_images.py, sharing no code with the recipes): every logged loss, the TrainOutput
  and every evaluation's metrics equal bit for bit (CPU, same tiny model from a config,
  same data and seed);
- it learns: seq2seq's ROUGE-L against copying the source; the digits' accuracy against
  chance;
- the exported `model.tar`, used in a fresh process that imports nothing of the project
  (plain_predict.py: `generate`; the image-classification pipeline), reproduces the job's
  last evaluation;
- bad input: 422s naming the field; a file that is not an image fails the job with reason
  `data` naming the file;
- the image job, its worker SIGKILLed after a checkpoint and the job resumed by a new
  worker, gives the uninterrupted job's losses and evaluations.

Run with `-s` to see the figures.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset

from tests.generated_tasks import cipher_pairs, digit_images
from tests.integration import plain_images, plain_seq2seq
from tests.integration.conftest import Stack, process_gone, threads_of_the_jobs
from tests.integration.test_faults import live_worker, training_child, wait_for
from tests.integration.test_tagging_and_qa import (
    assert_same_run,
    logged,
    predict_in_fresh_process,
    refused,
)
from tests.specs import tiny_spec
from traindepot.recipes.image_classification import TINY_VIT
from traindepot.recipes.seq2seq import TINY_T5

pytestmark = pytest.mark.integration


def test_seq2seq(stack: Stack, tmp_path: Path) -> None:
    from rouge_score import rouge_scorer

    rows = cipher_pairs(240, seed=1)
    lengths: dict[str, Any] = {"max_source_length": 48, "max_target_length": 32}
    generation: dict[str, Any] = {"generation_max_length": 32, "generation_num_beams": 1}
    training_args = {
        "max_steps": 100,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 8e-3,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 7,
        "dataloader_num_workers": 0,
    }
    spec = tiny_spec(
        task="seq2seq",
        name="seq2seq-cipher",
        model={"from_config": dict(TINY_T5)},
        dataset={"rows": rows, "eval_fraction": 0.2},
        preprocessing={
            "source_prefix": "rot13: ",
            "max_length": lengths["max_source_length"],
            "max_target_length": lengths["max_target_length"],
            "padding": "longest",
        },
        generation={"max_length": 32, "num_beams": 1},
        metric="rouge",
        training_args=training_args,
    )
    spec["dataset"].pop("text_column")
    job = stack.submit(spec)

    # Bad specs while it trains: each a 422 naming its field.
    problems = refused(stack, {**spec, "metric": "meteor"})
    assert [p["loc"] for p in problems] == [["metric"]], problems
    too_long = {**spec, "generation": {"max_length": 10**6}}
    problems = refused(stack, too_long)
    assert [p["loc"] for p in problems] == [["generation", "max_length"]], problems
    assert "max_sequence_length" in problems[0]["msg"].lower()
    bad_rows: list[dict[str, Any]] = [dict(r) for r in rows[:8]]
    bad_rows[5] = {"source": "cat", "target": 7}
    problems = refused(stack, {**spec, "dataset": {"rows": bad_rows, "eval_fraction": 0.5}})
    assert [p["loc"] for p in problems] == [["dataset", "rows", 5, "target"]], problems

    done = stack.wait(job["id"], timeout=600)
    assert done["status"] == "succeeded", done["error"]

    with threads_of_the_jobs():
        plain = plain_seq2seq.seq2seq_on_rows(
            rows,
            prefix="rot13: ",
            eval_fraction=0.2,
            split_seed=42,
            **lengths,
            **generation,
            metric="rouge",
            model_config=TINY_T5,
            training_args=training_args,
            output_dir=tmp_path / "plain",
        )
    assert_same_run(stack, done, plain)

    evaluation = list(Dataset.from_list(rows).train_test_split(test_size=0.2, seed=42)["test"])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    copy = sum(scorer.score(r["target"], r["source"])["rougeL"].fmeasure for r in evaluation)
    copy_rouge_l = copy / len(evaluation) * 100
    last = logged(stack, done["id"], "eval")[-1][1]
    first = logged(stack, done["id"], "eval")[0][1]
    print(
        f"\nseq2seq ROUGE-L: {last['eval_rougeL']:.1f} after 100 steps"
        f" ({first['eval_rougeL']:.1f} after 50), copying the source {copy_rouge_l:.1f}"
    )
    assert last["eval_rougeL"] >= copy_rouge_l + 15

    fresh = predict_in_fresh_process(
        stack,
        done["id"],
        tmp_path,
        {
            "task": "seq2seq",
            "rows": evaluation,
            "prefix": "rot13: ",
            "max_length": lengths["max_source_length"],
            "batch_size": training_args["per_device_eval_batch_size"],
        },
    )
    metrics = {k: last[f"eval_{k}"] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    assert fresh == metrics


def test_image_classification(stack: Stack, tmp_path: Path) -> None:
    digits = stack.data_dir / "digits"
    train_rows = digit_images(digits, start=0, count=512)
    eval_rows = digit_images(digits, start=1500, count=200)
    train_file, validation_file = digits / "train.jsonl", digits / "validation.jsonl"
    for path, data in ((train_file, train_rows), (validation_file, eval_rows)):
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    labels = [str(digit) for digit in range(10)]
    training_args = {
        "max_steps": 100,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 100,
        "learning_rate": 3e-3,
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 50,
        "save_strategy": "steps",
        "save_steps": 25,
        "use_cpu": True,
        "seed": 7,
        "dataloader_num_workers": 0,
    }
    spec = tiny_spec(
        task="image-classification",
        name="digits",
        model={"from_config": dict(TINY_VIT)},
        training_args=training_args,
    )
    spec.pop("tokenizer")
    spec.pop("preprocessing")
    spec["dataset"] = {
        "files": {"train": str(train_file), "validation": str(validation_file)},
        "label_names": labels,
    }
    job = stack.submit(spec)
    # The same job, its worker SIGKILLed once a checkpoint past step 25 is whole: resumed,
    # it must give the uninterrupted job's losses and evaluations.
    killed = stack.submit({**spec, "name": "digits-killed"})
    output = stack.job_dir(killed["id"]) / "output"
    wait_for(
        "a whole checkpoint past step 25",
        lambda: (output / "checkpoint-50" / "trainer_state.json").is_file(),
        timeout=300,
    )
    worker = live_worker(stack)
    child = training_child(worker.pid, stack.job_dir(killed["id"]))
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    wait_for("the training child to die with its worker", lambda: process_gone(child), 30)
    stack.start_worker("after-digits-kill")

    # Bad specs while it trains: each a 422 naming its field.
    problems = refused(stack, {**spec, "adapter": {"r": 4}})
    assert [p["loc"] for p in problems] == [["adapter"]], problems
    unused = {**spec, "training_args": {**training_args, "remove_unused_columns": True}}
    problems = refused(stack, unused)
    assert [p["loc"] for p in problems] == [["training_args", "remove_unused_columns"]]
    inline_rows = [{"image": train_rows[0]["image"], "label": 1}] * 4
    inline_rows[2] = {"image": "digit.png", "label": 1}
    inline = {**spec, "dataset": {"rows": inline_rows, "eval_fraction": 0.5}}
    problems = refused(stack, inline)
    assert [p["loc"] for p in problems] == [["dataset", "rows", 2, "image"]], problems

    # A file that is not an image: the job fails with reason `data`, naming it.
    not_an_image = digits / "not-an-image.png"
    not_an_image.write_text("these bytes are no PNG")
    bad_file = digits / "bad.jsonl"
    bad = [*eval_rows[:5], {"image": str(not_an_image), "label": 3}]
    bad_file.write_text("".join(json.dumps(r) + "\n" for r in bad))
    bad_spec = {**spec, "name": "digits-bad", "dataset": {"files": {"train": str(bad_file)}}}
    bad_spec["training_args"] = {**training_args, "eval_strategy": "no"}
    failed = stack.wait(stack.submit(bad_spec)["id"])
    assert failed["status"] == "failed" and failed["error"]["reason"] == "data", failed["error"]
    assert (
        f"row 5 of the train split: {str(not_an_image)!r} is not an image"
        in (failed["error"]["message"])
    )

    done = stack.wait(job["id"], timeout=600)
    assert done["status"] == "succeeded", done["error"]
    with threads_of_the_jobs():
        plain = plain_images.image_classification_on_files(
            train_file,
            validation_file,
            labels=labels,
            image_size=TINY_VIT["image_size"],
            model_config=TINY_VIT,
            training_args=training_args,
            output_dir=tmp_path / "plain",
        )
    assert_same_run(stack, done, plain)

    last = logged(stack, done["id"], "eval")[-1][1]
    print(
        f"\ndigits accuracy {last['eval_accuracy']:.3f}, macro F1 {last['eval_f1']:.3f}"
        " after 100 steps, against 0.1 for chance"
    )
    assert last["eval_accuracy"] >= 0.5

    fresh = predict_in_fresh_process(
        stack, done["id"], tmp_path, {"task": "image-classification", "rows": eval_rows}
    )
    assert fresh == {"accuracy": last["eval_accuracy"], "f1": last["eval_f1"]}

    resumed = stack.wait(killed["id"], timeout=600)
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["attempt"] == 2
    assert (stack.attempts(killed["id"])[1]["resumed_from_step"] or 0) >= 25
    assert stack.train_losses(killed["id"]) == stack.train_losses(done["id"])

    def evaluations(job_id: str) -> list[tuple[int, dict[str, Any]]]:
        return [
            (
                step,
                {k: v for k, v in values.items() if "runtime" not in k and "per_second" not in k},
            )
            for step, values in logged(stack, job_id, "eval")
        ]

    assert evaluations(killed["id"]) == evaluations(done["id"])
