"""TRL's trainers as the `sft` and `dpo` recipes use them; imported by those recipes only
(TRL is not imported by jobs of the other recipes). Runs in the training child only."""

from __future__ import annotations

from typing import Any

from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.sft_trainer import SFTTrainer

from worker.trainers import PerplexityMixin


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
