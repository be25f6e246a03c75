"""Plain TRL scripts, as a user writes them from TRL's documentation (the SFT Trainer and
DPO Trainer guides): a `datasets` dataset in TRL's format, a causal LM, `SFTConfig` /
`DPOConfig` and `SFTTrainer` / `DPOTrainer`.

The equivalence tests (test_chat_recipes.py) run these beside the service and compare every
logged loss. They share no code with the service's recipes (traindepot/recipes/sft.py,
dpo.py) or worker; the one input they take from the project is the built-in byte-level
tokenizer, as in plain_scripts.py. The service sets TrainingArguments' own defaults where
TRL's configs change them (bf16, activation checkpointing), so these scripts set them too.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # type: ignore[attr-defined]

from tests.integration.plain_scripts import byte_tokenizer, model_from_config

# What TRL's configs change from TrainingArguments' defaults, set back as the service does.
_AS_TRAINING_ARGUMENTS: dict[str, Any] = {"bf16": False, "activation_checkpointing": False}


def sft_chat(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    *,
    chat_template: str | None,
    model_config: dict[str, Any],
    max_length: int,
    training_args: dict[str, Any],
    output_dir: Path,
    lora: dict[str, Any] | None = None,
    **sft_options: Any,
) -> tuple[Any, list[dict[str, Any]]]:
    """SFT (chats with loss on the assistant's turns only, unless `sft_options` say
    otherwise: `packing`, `assistant_only_loss`...); with `lora`, a LoRA adapter as TRL's
    PEFT guide passes one (`peft_config`). Returns the TrainOutput and the Trainer's log
    history."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = model_from_config(AutoModelForCausalLM, model_config, tokenizer)
    config = SFTConfig(
        output_dir=str(output_dir),
        max_length=max_length,
        **{"assistant_only_loss": True, **sft_options},
        **_AS_TRAINING_ARGUMENTS,
        **training_args,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows is not None else None,
        processing_class=tokenizer,
        peft_config=_lora_config(lora),
    )
    output = trainer.train()
    return output, trainer.state.log_history


def _lora_config(lora: dict[str, Any] | None) -> Any:
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **lora)


def dpo_pairs(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    *,
    model_config: dict[str, Any] | None,
    max_length: int,
    beta: float,
    loss_type: str,
    training_args: dict[str, Any],
    output_dir: Path,
    model_dir: Path | None = None,
    lora: dict[str, Any] | None = None,
    reference_config: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """DPO on prompt/chosen/rejected rows (strings, or chats rendered by the tokenizer's
    template). The policy is a model from `model_config`, or the pretrained model (and its
    tokenizer) in `model_dir`. The reference: with `lora`, none (TRL disables the
    adapter); a model from `reference_config` (built after the policy); else a frozen copy
    of the starting model (a model from a config has no checkpoint for TRL to load one
    from)."""
    set_seed(training_args["seed"])
    tokenizer: Any
    if model_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    else:
        assert model_config is not None
        tokenizer = byte_tokenizer()
        model = model_from_config(AutoModelForCausalLM, model_config, tokenizer)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if lora is not None:
        reference = None
    elif reference_config is not None:
        reference = model_from_config(AutoModelForCausalLM, reference_config, tokenizer)
    else:
        reference = copy.deepcopy(model)
    config = DPOConfig(
        output_dir=str(output_dir),
        max_length=max_length,
        beta=beta,
        loss_type=[loss_type],
        **_AS_TRAINING_ARGUMENTS,
        **training_args,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows is not None else None,
        processing_class=tokenizer,
        peft_config=_lora_config(lora),
    )
    output = trainer.train()
    return output, trainer.state.log_history
