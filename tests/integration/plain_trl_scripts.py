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
from transformers import AutoModelForCausalLM, set_seed
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # type: ignore[attr-defined]

from tests.integration.plain_scripts import byte_tokenizer, model_from_config

# What TRL's configs change from TrainingArguments' defaults, set back as the service does.
_AS_TRAINING_ARGUMENTS: dict[str, Any] = {"bf16": False, "activation_checkpointing": False}


def sft_chat(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    *,
    chat_template: str,
    model_config: dict[str, Any],
    max_length: int,
    training_args: dict[str, Any],
    output_dir: Path,
) -> tuple[Any, list[dict[str, Any]]]:
    """Chat SFT with loss on the assistant's turns only; returns the TrainOutput and the
    Trainer's log history."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = chat_template
    model = model_from_config(AutoModelForCausalLM, model_config, tokenizer)
    config = SFTConfig(
        output_dir=str(output_dir),
        max_length=max_length,
        assistant_only_loss=True,
        **_AS_TRAINING_ARGUMENTS,
        **training_args,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        processing_class=tokenizer,
    )
    output = trainer.train()
    return output, trainer.state.log_history


def dpo_pairs(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    *,
    model_config: dict[str, Any],
    max_length: int,
    beta: float,
    loss_type: str,
    training_args: dict[str, Any],
    output_dir: Path,
) -> tuple[Any, list[dict[str, Any]]]:
    """DPO on prompt/chosen/rejected strings; the reference is a frozen copy of the
    starting model (a model from a config has no checkpoint for TRL to load one from)."""
    set_seed(training_args["seed"])
    tokenizer = byte_tokenizer()
    model = model_from_config(AutoModelForCausalLM, model_config, tokenizer)
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
        eval_dataset=Dataset.from_list(eval_rows),
        processing_class=tokenizer,
    )
    output = trainer.train()
    return output, trainer.state.log_history
