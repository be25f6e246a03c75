"""Killed and resumed equals uninterrupted, for the recipes whose service path is tested
without a kill (token-classification, question-answering, seq2seq): a trainer built again
by the worker's builders, as a resumed attempt builds it, and resumed from the run's
checkpoint logs the losses and evaluations of the uninterrupted run after that step
(token-classification and question-answering with a LoRA adapter too).
(Through the stack, a SIGKILL and resume: causal-lm, sequence-classification, sft, image-
classification; dpo at this level in tests/unit/test_chat_training.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.generated_tasks import TAGS, cipher_pairs, qa_rows, tagged_sentences
from tests.specs import TINY_BERT, tiny_spec
from traindepot.recipes.registry import validate_spec
from traindepot.recipes.seq2seq import TINY_T5

ARGS = {
    "max_steps": 4,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "logging_steps": 1,
    "eval_strategy": "steps",
    "eval_steps": 2,
    "save_strategy": "steps",
    "save_steps": 2,
    "use_cpu": True,
    "seed": 3,
    "dataloader_num_workers": 0,
}


def spec_of(task: str) -> dict[str, Any]:
    if task == "token-classification":
        spec = tiny_spec(
            task=task,
            model={"from_config": dict(TINY_BERT)},
            dataset={"rows": tagged_sentences(24, seed=1), "label_names": TAGS,
                     "eval_fraction": 0.25},
            preprocessing={"max_length": 64},
        )  # fmt: skip
        spec["dataset"].pop("text_column")
    elif task == "question-answering":
        spec = tiny_spec(
            task=task,
            model={"from_config": dict(TINY_BERT)},
            dataset={"rows": qa_rows(24, seed=1), "eval_fraction": 0.25},
            preprocessing={"max_length": 64, "stride": 24},
        )
    else:
        spec = tiny_spec(
            task=task,
            model={"from_config": dict(TINY_T5)},
            dataset={"rows": cipher_pairs(24, seed=1), "eval_fraction": 0.25},
            preprocessing={"max_length": 24, "max_target_length": 12},
        )
    spec["training_args"] = ARGS
    return spec


def after_step(history: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """The logged entries after `step` (losses, evaluations), less their timings; not the
    final summary, whose `train_loss` averages the steps this run trained."""
    return [
        {k: v for k, v in entry.items() if not k.endswith(("_runtime", "_per_second"))}
        for entry in history
        if entry["step"] > step and "train_loss" not in entry
    ]


@pytest.mark.parametrize(
    ("task", "adapter"),
    [
        ("token-classification", None),
        ("question-answering", None),
        ("seq2seq", None),
        ("token-classification", {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}),
        ("question-answering", {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}),
    ],
    ids=["token-classification", "question-answering", "seq2seq", "tagging-lora", "qa-lora"],
)
def test_resumed_from_a_checkpoint_equals_uninterrupted(
    task: str, adapter: dict[str, Any] | None, tmp_path: Path
) -> None:
    """With a LoRA adapter too: the checkpoint holds the adapter and the task's head."""
    from worker.builders import build_trainer

    def spec_with_adapter() -> Any:
        spec = spec_of(task)
        if adapter is not None:
            spec["adapter"] = adapter
        return validate_spec(spec)

    whole = build_trainer(spec_with_adapter(), tmp_path / "whole")
    whole.train()
    resumed = build_trainer(spec_with_adapter(), tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    expected = after_step(whole.state.log_history, 2)
    assert any("eval_loss" in e for e in expected) and any("loss" in e for e in expected)
    assert after_step(resumed.state.log_history, 2) == expected
