"""Trainer subclasses the recipes share. Runs in the training child only. TRL's trainers
(the `sft` and `dpo` recipes) are subclassed in worker/trl_trainers.py, so that other jobs
never import TRL."""

from __future__ import annotations

import math
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput


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
