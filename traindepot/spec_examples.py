"""Example job specs: the OpenAPI examples of `POST /jobs`, the demo's job and the tests'.

Each one validates against ``traindepot.spec.JobSpec`` (tests/unit/test_spec.py checks it).
The examples of each task live in its recipe (`Recipe.examples`, traindepot/recipes/).
"""

from __future__ import annotations

from typing import Any


def example_spec() -> dict[str, Any]:
    """A small offline causal-LM job: used in the OpenAPI docs, the demo and the tests."""
    return {
        "name": "tiny-gpt2-demo",
        "task": "causal-lm",
        "model": {
            "from_config": {
                "model_type": "gpt2",
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 64,
                "n_positions": 128,
            }
        },
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {
            "rows": [{"text": "The quick brown fox jumps over the lazy dog."}] * 16,
            "text_column": "text",
        },
        "preprocessing": {"max_length": 64},
        "training_args": {
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "save_steps": 4,
            "use_cpu": True,
        },
        "tags": {"team": "demo"},
    }


def task_examples() -> dict[str, dict[str, Any]]:
    """The OpenAPI examples of the job body: each recipe's own (`Recipe.examples`).

    Each one is valid as it stands and runs offline (a model from a config, the built-in
    tokenizer, inline rows), except `hub-causal-lm`, which shows the seed example's shape
    with a Hub model and dataset."""
    from traindepot.recipes import all_recipes

    examples: dict[str, dict[str, Any]] = {}
    for recipe in all_recipes().values():
        examples.update(recipe.examples())
    return examples


def tiny_bert_config() -> dict[str, Any]:
    """The tiny BERT of the masked-lm and sequence-classification examples."""
    return {
        "model_type": "bert",
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    }
