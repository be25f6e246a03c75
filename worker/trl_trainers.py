"""TRL's trainers as the `sft` and `dpo` recipes use them; imported by those recipes only
(TRL is not imported by jobs of the other recipes). Runs in the training child only."""

from __future__ import annotations

import copy
from typing import Any

from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.sft_trainer import SFTTrainer

from worker.trainers import PerplexityMixin


class PerplexitySFTTrainer(PerplexityMixin, SFTTrainer):
    """TRL's `SFTTrainer`, with the perplexity of every evaluation."""


class PromptTruncatingDPOTrainer(DPOTrainer):
    """TRL's `DPOTrainer`, whose tokenised prompts keep at most their last
    `max_prompt_length` tokens (the end of a prompt is what the answer follows); TRL 1.x's
    `DPOConfig` truncates the whole sequence only (`max_length`). TRL drops an example whose
    prompt alone fills `max_length` (`truncation_mode="keep_start"`); that rule is applied to
    the cut prompt, so a long prompt is cut, not dropped."""

    def __init__(self, *args: Any, max_prompt_length: int | None = None, **kwargs: Any) -> None:
        self._max_prompt_length = max_prompt_length
        super().__init__(*args, **kwargs)

    def _prepare_dataset(
        self, dataset: Any, processing_class: Any, args: Any, dataset_name: str
    ) -> Any:
        limit = self._max_prompt_length
        if limit is None:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        # TRL's preparation without its filter on the whole prompt's length...
        unfiltered = copy.copy(args)
        unfiltered.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, unfiltered, dataset_name)

        def truncate(example: dict[str, Any]) -> dict[str, Any]:
            return {"prompt_ids": example["prompt_ids"][-limit:]}

        dataset = dataset.map(truncate)
        # ...then that filter on the cut prompts (none fills `max_length` when the limit is
        # below it, as the API requires).
        max_length = args.max_length
        if max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < max_length)
        return dataset
