"""`masked-lm`: masked-token prediction on texts (BERT-style models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from traindepot.recipes.base import Example, example_training_args
from traindepot.recipes.language_modelling import LanguageModellingRecipe, LMPreprocessing
from traindepot.spec import JobSpec
from traindepot.spec_examples import tiny_bert_config


class MaskedLMSpec(JobSpec):
    """A `masked-lm` job."""

    task: Literal["masked-lm"]
    preprocessing: LMPreprocessing = Field(default_factory=LMPreprocessing)


class MaskedLMRecipe(LanguageModellingRecipe):
    task = "masked-lm"
    spec_model = MaskedLMSpec
    summary = "Masked-token prediction on texts (BERT-style models); reports perplexity."

    def examples(self) -> dict[str, Example]:
        return {
            "masked-lm": {
                "summary": "masked-lm: a tiny BERT, texts grouped into blocks, 10% held out",
                "value": {
                    "name": "tiny-bert-mlm",
                    "task": "masked-lm",
                    "model": {"from_config": tiny_bert_config()},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {
                        "rows": [{"text": "Language models learn from masked words."}] * 32,
                        "eval_fraction": 0.1,
                    },
                    "preprocessing": {"max_length": 64, "group_texts": True},
                    "training_args": example_training_args(4),
                },
            },
        }

    def model_class(self) -> Any:
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    def prepare_tokenizer(self, spec: JobSpec, tokenizer: Any) -> Any:
        if tokenizer.mask_token is None:
            from worker.errors import ConfigError

            raise ConfigError("task `masked-lm` needs a tokenizer with a mask token")
        return tokenizer

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(tokenizer, mlm=True)
