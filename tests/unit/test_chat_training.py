"""The chat recipes' options, trained a few steps through the worker's own builders
(`worker.builders.build_trainer`, what the training child runs) and compared loss for loss
with TRL's plain scripts (tests/integration/plain_trl_scripts.py): SFT with packing, SFT on
a text column, DPO on conversations, DPO against an explicit reference model, DPO with a
LoRA adapter (whose reference is the base with the adapter disabled: no copy of it). The
whole service path of each recipe is tested once, in tests/integration/test_chat_recipes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chat_data import chat_rows, conversational_pairs, preference_rows
from tests.integration import plain_trl_scripts
from tests.specs import TINY_GPT2
from traindepot.recipes.chat import CHAT_TEMPLATES
from traindepot.spec import JobSpec

GPT2 = {**TINY_GPT2, "n_positions": 128}
ARGS: dict[str, Any] = {
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "logging_steps": 1,
    "learning_rate": 1e-2,
    "save_strategy": "no",
    "use_cpu": True,
    "seed": 7,
}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}
CHATML = CHAT_TEMPLATES["chatml"]


def trained(spec: dict[str, Any], output_dir: Path) -> tuple[Any, list[float]]:
    """The job's trainer, built by the worker's builders and trained, with its losses."""
    from worker.builders import build_trainer

    trainer = build_trainer(JobSpec.model_validate(spec), output_dir)
    trainer.train()
    return trainer, losses(trainer.state.log_history)


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [entry["loss"] for entry in history if "loss" in entry]


def base_spec(task: str, rows: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {
        "name": task,
        "task": task,
        "model": {"from_config": GPT2},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": rows},
        "training_args": ARGS,
        **more,
    }


def test_sft_with_packing_equals_trl(tmp_path: Path) -> None:
    """Chats packed into blocks of `max_length` (TRL's best-fit packing), loss on the
    assistant's turns only."""
    rows = chat_rows(24, seed=1)
    model = {"from_config": {**GPT2, "n_positions": 256}}
    spec = base_spec(
        "sft",
        rows,
        model=model,
        preprocessing={"max_length": 256, "packing": True, "assistant_only_loss": True},
        chat_template={"name": "chatml"},
    )
    trainer, ours = trained(spec, tmp_path / "svc")
    assert len(trainer.train_dataset) <= len(rows) / 2  # two chats or more per packed row
    _, history = plain_trl_scripts.sft_chat(
        rows,
        None,
        chat_template=CHATML,
        model_config=model["from_config"],
        max_length=256,
        training_args=ARGS,
        output_dir=tmp_path / "plain",
        packing=True,
    )
    assert len(ours) == 3 and ours == losses(history)


def test_sft_on_a_text_column_equals_trl(tmp_path: Path) -> None:
    """Plain text under a column of the user's name (`dataset.text_column`), loss on every
    token; no chat template is needed."""
    rows = [
        {"body": f"say {row['messages'][1]['content']}: {row['messages'][2]['content']}"}
        for row in chat_rows(16, seed=2)
    ]
    spec = base_spec(
        "sft",
        rows,
        dataset={"rows": rows, "text_column": "body", "format": "text"},
        preprocessing={"max_length": 64},
    )
    _, ours = trained(spec, tmp_path / "svc")
    _, history = plain_trl_scripts.sft_chat(
        [{"text": row["body"]} for row in rows],
        None,
        chat_template=None,
        model_config=GPT2,
        max_length=64,
        training_args=ARGS,
        output_dir=tmp_path / "plain",
        assistant_only_loss=False,
    )
    assert len(ours) == 3 and ours == losses(history)


@pytest.mark.parametrize(
    ("variant", "extra"),
    [
        ("conversational", {"chat_template": {"name": "chatml"}}),
        ("reference-model", {"dpo": {"reference_model": {"from_config": {**GPT2, "n_layer": 1}}}}),
        ("adapter", {"adapter": {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}}),
    ],
)
def test_dpo_equals_trl(variant: str, extra: dict[str, Any], tmp_path: Path) -> None:
    """DPO on chats (rendered by the spec's template); against an explicit reference
    model (another, smaller model from a config); with a LoRA adapter, whose reference is
    the base with the adapter disabled: no reference model, no copy of the adapter."""
    if variant == "conversational":
        rows = conversational_pairs(16, seed=3)
    else:
        rows = preference_rows(16, seed=3)
    spec = base_spec("dpo", rows, preprocessing={"max_length": 64}, **extra)
    trainer, ours = trained(spec, tmp_path / "svc")
    if variant == "adapter":
        from peft import PeftModel

        assert trainer.ref_model is None
        assert isinstance(trainer.model, PeftModel)
        assert list(trainer.model.peft_config) == ["default"]
    if variant == "reference-model":
        layers = trainer.ref_model.config.n_layer, trainer.model.config.n_layer
        assert layers == (1, GPT2["n_layer"])
    _, history = plain_trl_scripts.dpo_pairs(
        rows,
        None,
        model_config=GPT2,
        max_length=64,
        beta=0.1,
        loss_type="sigmoid",
        training_args=ARGS,
        output_dir=tmp_path / "plain",
        chat_template=CHATML if variant == "conversational" else None,
        reference_config={**GPT2, "n_layer": 1} if variant == "reference-model" else None,
        lora=LORA if variant == "adapter" else None,
    )
    assert len(ours) == 3 and ours == losses(history)


def test_dpo_resumed_from_a_checkpoint_equals_uninterrupted(tmp_path: Path) -> None:
    """A dpo trainer built again, as a resumed attempt builds it, and resumed from a
    checkpoint logs the losses of the uninterrupted run: its reference is the starting
    model again (built from the same seed), not the checkpoint's policy."""
    from worker.builders import build_trainer

    args = {**ARGS, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    spec = base_spec(
        "dpo", preference_rows(16, seed=3), preprocessing={"max_length": 64}, training_args=args
    )
    _, whole = trained(spec, tmp_path / "whole")
    resumed = build_trainer(JobSpec.model_validate(spec), tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    after = [e["loss"] for e in resumed.state.log_history if "loss" in e and e["step"] > 2]
    assert len(whole) == 4 and after == whole[2:]
