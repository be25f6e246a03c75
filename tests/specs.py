"""Tiny job specs for tests: GPT-2-shaped models from a config, the byte-level tokenizer,
inline text. Each trains in well under a second of steps on a CPU."""

from __future__ import annotations

import copy
from typing import Any

TINY_GPT2: dict[str, Any] = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 32,
    "n_positions": 64,
}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A stitch in time saves nine.",
    "All that glitters is not gold.",
    "Fortune favours the bold.",
    "Actions speak louder than words.",
    "Knowledge is power.",
    "Time and tide wait for no man.",
    "Where there is a will there is a way.",
]


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A causal-LM spec; `training_args` and other sections are merged one level deep."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "task": "causal-lm",
        "model": {"from_config": dict(TINY_GPT2)},
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {"rows": [{"text": s} for s in SENTENCES * 2], "text_column": "text"},
        "preprocessing": {"max_length": 32},
        "training_args": {
            "max_steps": 6,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "save_strategy": "no",
            "use_cpu": True,
            "seed": 7,
            "dataloader_num_workers": 0,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = copy.deepcopy(value)
    return spec


TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def tiny_bert_spec(task: str, **overrides: Any) -> dict[str, Any]:
    """`tiny_spec` with a tiny BERT for `masked-lm` or `sequence-classification`."""
    return tiny_spec(task=task, model={"from_config": dict(TINY_BERT)}, **overrides)


# The tasks of the built-in recipes (traindepot/recipes/registry.py), each with an example.
BUILT_IN_TASKS = {
    "causal-lm",
    "masked-lm",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "seq2seq",
    "image-classification",
    "sft",
    "dpo",
}
