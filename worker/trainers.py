"""Trainer subclasses the recipes share. Runs in the training child only. TRL's trainers
(the `sft` and `dpo` recipes) are subclassed in worker/trl_trainers.py, so that other jobs
never import TRL."""

from __future__ import annotations

import math
from pathlib import Path
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


class RenamedWeightsMixin:
    """Checkpoints of a model whose saved weight names are not its modules' names, loaded
    with the names converted.

    transformers 5 renames some models' weights when it saves them (ViT's
    `vit.layers.0.attention.q_proj` is saved as `vit.encoder.layer.0.attention.attention.query`)
    and converts them back in `from_pretrained`; the Trainer's resume and
    `load_best_model_at_end` load the checkpoint's file as it is, with `strict=False`, so
    every renamed weight would silently keep its fresh initialisation. When the
    checkpoint's names are not all the model's, the weights are loaded by `from_pretrained`
    (which converts them) and copied in; otherwise the Trainer loads them as usual."""

    def _load_converted(self, checkpoint: str | None, model: Any) -> bool:
        from safetensors import safe_open
        from transformers import PreTrainedModel

        weights = Path(checkpoint or "") / "model.safetensors"
        if (
            checkpoint is None
            or not isinstance(model, PreTrainedModel)
            or not weights.is_file()
            or getattr(self, "is_fsdp_enabled", False)
            or getattr(self, "is_deepspeed_enabled", False)
        ):
            return False
        with safe_open(str(weights), "pt") as saved:
            names = set(saved.keys())
        if names <= set(model.state_dict()):
            return False
        loaded = type(model).from_pretrained(checkpoint, dtype=model.dtype)
        model.load_state_dict(loaded.state_dict())
        return True

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = model if model is not None else self.model  # type: ignore[attr-defined]
        if not self._load_converted(resume_from_checkpoint, target):
            super()._load_from_checkpoint(resume_from_checkpoint, model)  # type: ignore[misc]

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint  # type: ignore[attr-defined]
        if not self._load_converted(best, self.model):  # type: ignore[attr-defined]
            super()._load_best_model()  # type: ignore[misc]


class RenamedWeightsTrainer(RenamedWeightsMixin, Trainer):
    """The `Trainer`, resuming (and loading its best model) with renamed weights converted."""
