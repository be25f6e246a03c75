"""Trainer subclasses the recipes share. Runs in the training child only."""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.sft_trainer import SFTTrainer


class PerplexityMixin:
    """Adds the perplexity of a language-modelling job, exp(loss), beside the loss of
    every evaluation (`eval_perplexity`); logged with the other eval metrics."""

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> EvalLoopOutput:
        output: EvalLoopOutput = super().evaluation_loop(*args, **kwargs)  # type: ignore[misc]
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = output.metrics
        loss = None if metrics is None else metrics.get(f"{prefix}_loss")
        # A loss above ~709 has no finite perplexity: none is reported.
        if metrics is not None and isinstance(loss, float) and math.isfinite(loss) and loss < 709:
            metrics[f"{prefix}_perplexity"] = math.exp(loss)
        return output


class PerplexityTrainer(PerplexityMixin, Trainer):
    """The `Trainer`, with the perplexity of every evaluation."""


class PerplexitySFTTrainer(PerplexityMixin, SFTTrainer):
    """TRL's `SFTTrainer`, with the perplexity of every evaluation."""


class PromptTruncatingDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer`, whose tokenised prompts keep at most their last
    `max_prompt_length` tokens (the end of a prompt is what the answer follows); TRL 1.x's
    `DPOConfig` truncates the whole sequence only (`max_length`)."""

    def __init__(self, *args: Any, max_prompt_length: int | None = None, **kwargs: Any) -> None:
        self._max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
        dataset = super()._prepare_dataset(*args, **kwargs)
        limit = self._max_prompt_length
        if limit is None:
            return dataset

        def truncate(example: dict[str, Any]) -> dict[str, Any]:
            return {"prompt_ids": example["prompt_ids"][-limit:]}

        return dataset.map(truncate)
