"""Adapters (LoRA, with peft) and quantized bases (QLoRA, with bitsandbytes) at submit: the
rules that need no model, the adapter's count on the meta device and its target modules
(`traindepot/limits.py` builds the model), and the `LoraConfig` arguments the worker uses
too (worker/adapters.py). No torch at import: peft is imported inside `count_adapter`,
which runs under the import lock of `traindepot.training_args`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from traindepot.problems import Problem
from traindepot.spec import JobSpec, LoraAdapter

if TYPE_CHECKING:
    from traindepot.parameters import ParameterCount

__all__ = ["adapter_problems", "count_adapter", "lora_config_kwargs", "target_problems"]


def lora_config_kwargs(adapter: LoraAdapter, task_type: str | None) -> dict[str, Any]:
    """peft's `LoraConfig` arguments for `adapter` on a recipe of peft task `task_type`."""
    return {
        "task_type": task_type,
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": adapter.target_modules,
        "modules_to_save": adapter.modules_to_save,
    }


def adapter_problems(spec: JobSpec) -> list[Problem]:
    """The adapter and quantization rules that need no model."""
    from traindepot.recipes import recipe_for

    problems: list[Problem] = []
    if spec.adapter is not None and recipe_for(spec).adapter_task_type is None:
        problems.append(
            Problem(
                ("adapter",),
                f"task `{spec.task}` takes no adapter: train every weight (leave `adapter` out)",
                "not_for_task",
            )
        )
    if spec.quantization is not None:
        if spec.adapter is None:
            problems.append(
                Problem(
                    ("quantization",),
                    "a quantized base is trained through an adapter only: set `adapter`",
                    "needs_adapter",
                )
            )
        if spec.model.from_config is not None:
            problems.append(
                Problem(
                    ("quantization",),
                    "quantizes pretrained weights: give `model.name_or_path`, not `from_config`",
                    "needs_pretrained",
                )
            )
    return problems


def _linear_layers(model: Any) -> list[str]:
    """The distinct names (last component) of the model's linear layers, as peft's
    `all-linear` sees them (`torch.nn.Linear` and transformers' `Conv1D`)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and name
    }
    return sorted(names)


def count_adapter(model: Any, lora: dict[str, Any], total: int) -> ParameterCount:
    """`model` (built on the meta device, `total` parameters) with the adapter applied:
    what it trains, or which targets match nothing."""
    from peft import LoraConfig, get_peft_model

    from traindepot.parameters import ParameterCount

    linear = tuple(_linear_layers(model))
    targets = lora["target_modules"]
    if isinstance(targets, list):
        names = [name for name, _ in model.named_modules()]
        unmatched = tuple(
            target
            for target in targets
            if not any(name == target or name.endswith(f".{target}") for name in names)
        )
        if unmatched:
            return ParameterCount(total, total, unmatched=unmatched, linear_layers=linear)
    try:
        adapted = get_peft_model(model, LoraConfig(**lora))
    except (ValueError, TypeError) as exc:  # e.g. a target of a type LoRA does not support
        return ParameterCount(total, total, linear_layers=linear, adapter_error=str(exc))
    trainable, _ = adapted.get_nb_trainable_parameters()
    return ParameterCount(total=total, trainable=int(trainable), linear_layers=linear)


def target_problems(
    spec: JobSpec, unmatched: Sequence[str], linear: Sequence[str], error: str | None
) -> list[Problem]:
    """A 422 for each `target_modules` entry that matches no module, listing the model's
    linear layers, and one for peft's refusal of the adapter."""
    if spec.adapter is None:
        return []
    layers = ", ".join(f"`{name}`" for name in linear) or "none"
    targets = spec.adapter.target_modules
    problems = [
        Problem(
            ("adapter", "target_modules", targets.index(name) if isinstance(targets, list) else 0),
            f"{name!r} matches no module of the model; its linear layers are {layers}",
            "unknown_module",
        )
        for name in unmatched
    ]
    if error is not None:
        problems.append(
            Problem(
                ("adapter", "target_modules"),
                f"peft cannot put a LoRA adapter there: {error} (linear layers: {layers})",
                "adapter_refused",
            )
        )
    return problems
