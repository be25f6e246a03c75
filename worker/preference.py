"""The reference model of a preference-tuning job (the `dpo` recipe). Runs in the training
child only."""

from __future__ import annotations

import copy
from typing import Any

from traindepot.recipes.dpo import DPOSpec


def reference_model(spec: DPOSpec, model: Any, tokenizer: Any) -> Any:
    """The frozen model the policy is compared with: the spec's `dpo.reference_model`; else
    None for a job with an adapter (TRL puts it on the base, `peft_config`, and disables it
    for the reference: the base is the reference, no second copy); else a frozen copy of
    the starting weights (TRL would load one again from `config._name_or_path`, which a
    model from a config has not)."""
    given = spec.dpo.reference_model
    if given is not None:
        from worker.builders import build_model

        built = build_model(spec.model_copy(update={"model": given}), tokenizer, None)
    elif spec.adapter is not None:
        return None
    else:
        built = copy.deepcopy(model)
    built.train(False)
    built.requires_grad_(False)
    return built
