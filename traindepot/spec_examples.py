"""Example job specs: the OpenAPI examples of `POST /jobs`, the demo's job and the tests'.

Each one validates against ``traindepot.spec.JobSpec`` (tests/unit/test_spec.py checks it).
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
    """One example per task, for the OpenAPI document (`openapi_examples` of the job body).

    Each one is valid as it stands and runs offline (a model from a config, the built-in
    tokenizer, inline rows), except `hub-causal-lm`, which shows the seed example's shape
    with a Hub model and dataset."""
    tiny_bert = {
        "model_type": "bert",
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    }
    return {
        "causal-lm": {
            "summary": "causal-lm: a tiny GPT-2 from a config, inline rows",
            "value": example_spec(),
        },
        "masked-lm": {
            "summary": "masked-lm: a tiny BERT, texts grouped into blocks, 10% held out",
            "value": {
                "name": "tiny-bert-mlm",
                "task": "masked-lm",
                "model": {"from_config": tiny_bert},
                "tokenizer": {"builtin": "byte-level"},
                "dataset": {
                    "rows": [{"text": "Language models learn from masked words."}] * 32,
                    "eval_fraction": 0.1,
                },
                "preprocessing": {"max_length": 64, "group_texts": True},
                "training_args": {
                    "max_steps": 8,
                    "per_device_train_batch_size": 4,
                    "eval_strategy": "steps",
                    "eval_steps": 4,
                    "save_steps": 4,
                    "use_cpu": True,
                },
            },
        },
        "sequence-classification": {
            "summary": "sequence-classification: text pairs, given label names, early stopping",
            "value": {
                "name": "tiny-bert-nli",
                "task": "sequence-classification",
                "model": {"from_config": tiny_bert},
                "tokenizer": {"builtin": "byte-level"},
                "dataset": {
                    "rows": [
                        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
                        {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": 2},
                        {"premise": "A man eats.", "hypothesis": "Someone is eating.", "label": 0},
                        {"premise": "A man eats.", "hypothesis": "He is hungry.", "label": 1},
                    ]
                    * 8,
                    "text_column": "premise",
                    "text_pair_column": "hypothesis",
                    "label_column": "label",
                    "label_names": ["entailment", "neutral", "contradiction"],
                    "eval_fraction": 0.25,
                },
                "preprocessing": {"max_length": 64, "padding": "longest"},
                "training_args": {
                    "num_train_epochs": 3,
                    "per_device_train_batch_size": 8,
                    "eval_strategy": "epoch",
                    "save_strategy": "epoch",
                    "load_best_model_at_end": True,
                    "metric_for_best_model": "eval_loss",
                    "use_cpu": True,
                },
                "early_stopping": {"patience": 2, "threshold": 0.0},
                "seed": 13,
            },
        },
        "hub-causal-lm": {
            "summary": "causal-lm on the Hub: GPT-2 on 1% of wikitext (needs Hub access)",
            "value": {
                "name": "gpt2-wikitext-smoke",
                "task": "causal-lm",
                "model": {"name_or_path": "gpt2", "revision": "main"},
                "tokenizer": None,
                "dataset": {
                    "hub": {"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "train[:1%]"},
                    "text_column": "text",
                    "max_samples": 100,
                },
                "preprocessing": {"max_length": 128, "padding": "max_length"},
                "training_args": {
                    "num_train_epochs": 1,
                    "per_device_train_batch_size": 4,
                    "save_steps": 25,
                    "logging_steps": 10,
                    "learning_rate": 2e-5,
                },
                "queue": "default",
                "priority": 5,
                "tags": {"team": "nlp"},
            },
        },
    }
