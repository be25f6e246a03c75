"""`causal-lm`: next-token prediction on texts (GPT-style models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from traindepot.recipes.base import Example
from traindepot.recipes.language_modelling import LanguageModellingRecipe, LMPreprocessing
from traindepot.spec import JobSpec
from traindepot.spec_examples import example_spec


class CausalLMSpec(JobSpec):
    """A `causal-lm` job (the default task)."""

    task: Literal["causal-lm"] = "causal-lm"
    preprocessing: LMPreprocessing = Field(default_factory=LMPreprocessing)


class CausalLMRecipe(LanguageModellingRecipe):
    task = "causal-lm"
    spec_model = CausalLMSpec
    summary = "Next-token prediction on texts (GPT-style models); reports perplexity."
    adapter_task_type = "CAUSAL_LM"

    def examples(self) -> dict[str, Example]:
        return {
            "causal-lm": {
                "summary": "causal-lm: a tiny GPT-2 from a config, inline rows",
                "value": example_spec(),
            },
            "hub-causal-lm": {
                "summary": "causal-lm on the Hub: GPT-2 on 1% of wikitext (needs Hub access)",
                "value": {
                    "name": "gpt2-wikitext-smoke",
                    "task": "causal-lm",
                    "model": {"name_or_path": "gpt2", "revision": "main"},
                    "tokenizer": None,
                    "dataset": {
                        "hub": {
                            "path": "wikitext",
                            "name": "wikitext-2-raw-v1",
                            "split": "train[:1%]",
                        },
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

    def model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
