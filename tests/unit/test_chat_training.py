"""The chat recipes' options, trained a few steps through the worker's own builders
(`worker.builders.build_trainer`, what the training child runs) and compared loss for loss
with TRL's plain scripts (tests/integration/plain_trl_scripts.py): SFT with packing, SFT on
a text column, SFT on prompt/completion rows (loss on the completion only, checked on a
collated batch too), DPO on conversations, DPO against an explicit reference model, DPO with
a LoRA adapter (whose reference is the base with the adapter disabled: no copy of it), DPO's
other loss types and beta, and prompts cut to `max_prompt_length`. The whole service path of
each recipe is tested once, in tests/integration/test_chat_recipes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chat_data import chat_rows, conversational_pairs, preference_rows
from tests.integration import plain_trl_scripts
from tests.integration.plain_scripts import byte_tokenizer
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


def prompt_completion_rows(count: int, *, seed: int) -> list[dict[str, Any]]:
    """The chat task as prompt/completion strings: the word asked for, then the word."""
    turns = [row["messages"] for row in chat_rows(count, seed=seed)]
    return [{"prompt": f"Repeat {user['content']}: ", "completion": assistant["content"]}
            for _, user, assistant in turns]  # fmt: skip


def test_sft_on_prompt_completion_labels_the_completion_only(tmp_path: Path) -> None:
    """On a collated batch of prompt/completion rows (the default: loss on the completion
    only), every prompt token is labelled -100 and every completion token (and the EOS TRL
    ends it with) keeps its id; padding is -100 too."""
    from worker.builders import build_trainer

    rows = prompt_completion_rows(8, seed=4)
    spec = base_spec("sft", rows, preprocessing={"max_length": 64})
    trainer = build_trainer(JobSpec.model_validate(spec), tmp_path / "svc")
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = byte_tokenizer()
    by_prompt = {row["prompt"]: row["completion"] for row in rows}
    assert len(batch["labels"]) == 4
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        text = str(tokenizer.decode([i for i in ids if i != tokenizer.pad_token_id]))
        prompt = next(p for p in by_prompt if text.startswith(p))  # the row this one is
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(by_prompt[prompt])["input_ids"] + [tokenizer.eos_token_id]
        assert ids[: len(prompt_ids) + len(completion_ids)] == prompt_ids + completion_ids
        padding = len(ids) - len(prompt_ids) - len(completion_ids)
        assert labels == [-100] * len(prompt_ids) + completion_ids + [-100] * padding


def test_sft_on_prompt_completion_equals_trl(tmp_path: Path) -> None:
    """Prompt/completion rows with the service's defaults (loss on the completion only),
    against TRL's SFTTrainer with its own defaults for that format."""
    rows = prompt_completion_rows(16, seed=4)
    spec = base_spec("sft", rows, preprocessing={"max_length": 64})
    _, ours = trained(spec, tmp_path / "svc")
    _, history = plain_trl_scripts.sft_chat(
        rows,
        None,
        chat_template=None,
        model_config=GPT2,
        max_length=64,
        training_args=ARGS,
        output_dir=tmp_path / "plain",
        assistant_only_loss=False,  # a chat option; TRL's default for prompt/completion
    )
    assert len(ours) == 3 and ours == losses(history)
    # Not the loss on every token: the prompt is left out of it.
    _, everything = trained(
        base_spec("sft", rows, preprocessing={"max_length": 64, "completion_only_loss": False}),
        tmp_path / "all",
    )
    assert everything[0] != ours[0]


@pytest.mark.parametrize(("loss_type", "beta"), [("ipo", 0.5), ("hinge", 0.25), ("sigmoid", 0.3)])
def test_dpo_loss_types_and_beta_equal_trl(loss_type: str, beta: float, tmp_path: Path) -> None:
    """DPO's other losses (IPO, hinge) and a beta other than TRL's default."""
    rows = preference_rows(16, seed=3)
    spec = base_spec(
        "dpo",
        rows,
        preprocessing={"max_length": 64},
        dpo={"loss_type": loss_type, "beta": beta},
    )
    trainer, ours = trained(spec, tmp_path / "svc")
    assert trainer.args.loss_type == [loss_type] and trainer.args.beta == beta
    _, history = plain_trl_scripts.dpo_pairs(
        rows,
        None,
        model_config=GPT2,
        max_length=64,
        beta=beta,
        loss_type=loss_type,
        training_args=ARGS,
        output_dir=tmp_path / "plain",
    )
    assert len(ours) == 3 and ours == losses(history)
    assert len(set(ours)) == 3  # it trains: each step's loss differs


def test_dpo_max_prompt_length_keeps_each_prompts_end_as_a_plain_script_does(
    tmp_path: Path,
) -> None:
    """`max_prompt_length`: each tokenised prompt keeps its last N tokens; a plain TRL
    script cuts the prompts the same way before DPOTrainer sees them (TRL 1.x has no such
    option). A prompt longer than `max_length` is kept, cut, not dropped."""
    rows = [
        {**row, "prompt": "Please, kindly, " * (3 + index % 4) + row["prompt"]}
        for index, row in enumerate(preference_rows(16, seed=3))
    ]
    rows[5] = {**rows[5], "prompt": "Long preamble. " * 6 + rows[5]["prompt"]}  # > max_length
    limit = 20
    spec = base_spec(
        "dpo",
        rows,
        preprocessing={"max_length": 64, "max_prompt_length": limit},
        dpo={"loss_type": "ipo", "beta": 0.5},
    )
    trainer, ours = trained(spec, tmp_path / "svc")
    prompts = trainer.train_dataset["prompt_ids"]
    assert len(prompts) == len(rows) and {len(p) for p in prompts} == {limit}
    tokenizer = byte_tokenizer()

    def cut(prompt: str) -> str:  # the plain script's own cut, from the text
        return str(tokenizer.decode(tokenizer(prompt)["input_ids"][-limit:]))

    _, history = plain_trl_scripts.dpo_pairs(
        [{**row, "prompt": cut(row["prompt"])} for row in rows],
        None,
        model_config=GPT2,
        max_length=64,
        beta=0.5,
        loss_type="ipo",
        training_args=ARGS,
        output_dir=tmp_path / "plain",
    )
    assert len(ours) == 3 and ours == losses(history)
