"""Issue 3: one end-to-end job per task, each compared with the same configuration run as a
plain `Trainer.train()` script (tests/integration/plain_scripts.py, which shares no code with
the service's builders); a local `save_pretrained` directory fine-tuned through
`model.name_or_path`; a job that continues from another job's checkpoint.

Each job is a few steps of a tiny model on CPU. The data goes through the `files` source
(jsonl, csv, parquet) under `stack.data_dir`, which is inside TRAINDEPOT_ALLOWED_PATHS.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration import plain_scripts
from tests.integration.conftest import Stack, threads_of_the_jobs
from tests.specs import SENTENCES, TINY_BERT, TINY_GPT2, tiny_bert_spec, tiny_spec

pytestmark = pytest.mark.integration


def run_and_compare(
    stack: Stack, spec: dict[str, Any], plain_run: Callable[[Path], Any], tmp_path: Path
) -> dict[str, Any]:
    """Submit `spec`, wait for success, and check its TrainOutput against `plain_run`, the
    same configuration as a plain script (given its output directory)."""
    job = stack.submit(spec)
    done = stack.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    with threads_of_the_jobs():
        expected = plain_run(tmp_path / "plain")
    result = done["result"]
    assert result["global_step"] == expected.global_step
    assert result["training_loss"] == pytest.approx(expected.training_loss, rel=1e-6)
    assert set(result["metrics"]) == set(expected.metrics)
    assert result["metrics"]["train_loss"] == pytest.approx(expected.metrics["train_loss"])
    return done


def eval_losses(stack: Stack, job_id: str) -> list[float]:
    rows = stack.sql(
        "SELECT values FROM job_metrics WHERE job_id = %s AND kind = 'eval' ORDER BY id",
        uuid.UUID(job_id),
    )
    return [values["eval_loss"] for (values,) in rows]


def checkpoint_config(stack: Stack, job_id: str) -> dict[str, Any]:
    output = stack.home / "jobs" / job_id / "output"
    last = max(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    config: dict[str, Any] = json.loads((last / "config.json").read_text())
    return config


@pytest.fixture(scope="module")
def pretrained_gpt2(stack: Stack) -> Path:
    """A local pretrained directory, as `save_pretrained` writes it: model and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    from worker.byte_tokenizer import byte_level_tokenizer

    directory = stack.data_dir / "tiny-gpt2-pretrained"
    tokenizer = byte_level_tokenizer()
    overrides = {k: v for k, v in TINY_GPT2.items() if k != "model_type"}
    config = AutoConfig.for_model(
        "gpt2",
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **overrides,
    )
    set_seed(1)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_causal_lm_fine_tunes_a_local_pretrained_dir(
    stack: Stack, pretrained_gpt2: Path, tmp_path: Path
) -> None:
    """causal-lm: a `save_pretrained` directory via `name_or_path` with its own tokenizer,
    jsonl train and validation files, texts grouped into blocks, evaluation every 2 steps;
    then a second job continues from the first one's checkpoint."""
    train = stack.data_dir / "causal-train.jsonl"
    train.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 3))
    validation = stack.data_dir / "causal-validation.jsonl"
    validation.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES[:4]))
    spec = tiny_spec(
        name="causal-lm-local-pretrained",
        model={"name_or_path": str(pretrained_gpt2), "torch_dtype": "float32"},
        tokenizer=None,
        dataset={"files": {"train": str(train), "validation": str(validation)}, "rows": None},
        preprocessing={"max_length": 16, "group_texts": True},
        training_args={
            "max_steps": 4,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
        },
    )
    spec["model"].pop("from_config")
    spec["dataset"].pop("rows")

    def plain(output_dir: Path) -> Any:
        return plain_scripts.causal_lm_pretrained_grouped(
            pretrained_gpt2,
            train_file=train,
            validation_file=validation,
            block_size=16,
            training_args=spec["training_args"],
            output_dir=output_dir,
        )

    done = run_and_compare(stack, spec, plain, tmp_path)
    assert done["result"]["global_step"] == 4
    assert len(eval_losses(stack, done["id"])) == 2  # evaluated at steps 2 and 4
    assert done["spec"]["tokenizer"] is None and done["spec"]["preprocessing"]["group_texts"]

    # Continue from that job's last checkpoint (step 4) up to step 6.
    follow_up = dict(spec, name="causal-lm-continued", resume_from_checkpoint=done["id"])
    follow_up["training_args"] = {**spec["training_args"], "max_steps": 6}
    continued = stack.wait(stack.submit(follow_up)["id"])
    assert continued["status"] == "succeeded", continued["error"]
    assert continued["result"]["global_step"] == 6
    steps = stack.sql(
        "SELECT step FROM job_metrics WHERE job_id = %s AND kind = 'train' ORDER BY id",
        uuid.UUID(continued["id"]),
    )
    assert [step for (step,) in steps] == [5, 6]  # it started after step 4


def test_masked_lm_on_csv_with_eval_fraction(stack: Stack, tmp_path: Path) -> None:
    """masked-lm: a tiny BERT from a config, the byte-level tokenizer, a csv file with its own
    column name, `max_samples`, a seeded `eval_fraction`, dynamic padding."""
    import csv

    path = stack.data_dir / "mlm.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sentence"])
        writer.writerows([i, s] for i, s in enumerate(SENTENCES * 3))
    spec = tiny_bert_spec(
        "masked-lm",
        name="masked-lm-csv",
        dataset={
            "files": {"train": str(path)},
            "rows": None,
            "text_column": "sentence",
            "max_samples": 16,
            "eval_fraction": 0.25,
            "seed": 3,
        },
        preprocessing={"max_length": 32, "padding": "longest"},
        training_args={"max_steps": 4, "eval_strategy": "steps", "eval_steps": 2},
    )
    spec["dataset"].pop("rows")

    def plain(output_dir: Path) -> Any:
        return plain_scripts.masked_lm_on_csv(
            path,
            text_column="sentence",
            max_samples=16,
            eval_fraction=0.25,
            split_seed=3,
            max_length=32,
            model_config=TINY_BERT,
            training_args=spec["training_args"],
            output_dir=output_dir,
        )

    done = run_and_compare(stack, spec, plain, tmp_path)
    assert done["result"]["global_step"] == 4
    assert len(eval_losses(stack, done["id"])) == 2


def test_sequence_classification_pairs_on_parquet(stack: Stack, tmp_path: Path) -> None:
    """sequence-classification: text pairs from a parquet file, string labels whose names and
    number are inferred from the data, evaluation, early stopping on `eval_loss`."""
    from datasets import Dataset

    labels = ["yes", "no", "maybe"]
    rows = [
        {"question": s, "answer": SENTENCES[(i + 3) % len(SENTENCES)], "verdict": labels[i % 3]}
        for i, s in enumerate(SENTENCES * 3)
    ]
    path = stack.data_dir / "pairs.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    spec = tiny_bert_spec(
        "sequence-classification",
        name="sequence-classification-pairs",
        dataset={
            "files": {"train": str(path)},
            "rows": None,
            "text_column": "question",
            "text_pair_column": "answer",
            "label_column": "verdict",
            "eval_fraction": 0.25,
        },
        preprocessing={"max_length": 48, "padding": "longest"},
        training_args={
            "max_steps": 6,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "metric_for_best_model": "eval_loss",
        },
        early_stopping={"patience": 2, "threshold": 0.0},
    )
    spec["dataset"].pop("rows")

    def plain(output_dir: Path) -> Any:
        return plain_scripts.pair_classification_on_parquet(
            path,
            text_column="question",
            pair_column="answer",
            label_column="verdict",
            eval_fraction=0.25,
            split_seed=42,  # `dataset.seed`'s default
            max_length=48,
            model_config=TINY_BERT,
            training_args=spec["training_args"],
            patience=2,
            output_dir=output_dir,
        )

    done = run_and_compare(stack, spec, plain, tmp_path)
    assert eval_losses(stack, done["id"])
    config = checkpoint_config(stack, done["id"])
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "maybe", "1": "no", "2": "yes"}  # sorted, inferred
