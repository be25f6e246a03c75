"""The job's adapter in the training child: the base loaded quantized for QLoRA
(bitsandbytes, CUDA only), the LoRA adapter put on it (peft), and the merged model of the
export. The API checked the spec (traindepot/adapters.py); both build the same `LoraConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from traindepot.adapters import lora_config_kwargs
from traindepot.spec import JobSpec


def quantization_kwargs(spec: JobSpec) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base quantized, or none."""
    quantization = spec.quantization
    if quantization is None:
        return {}
    import transformers

    # Untyped in transformers: called through Any.
    bits_and_bytes: Any = transformers.BitsAndBytesConfig

    if quantization.bits == 8:
        return {"quantization_config": bits_and_bytes(load_in_8bit=True)}
    return {
        "quantization_config": bits_and_bytes(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, quantization.compute_dtype),
        )
    }


def apply_adapter(model: Any, spec: JobSpec, task_type: str | None) -> Any:
    """`model` with the spec's LoRA adapter (a peft model), or `model` without one."""
    if spec.adapter is None:
        return model
    from peft import get_peft_model

    return get_peft_model(prepare_quantized(model, spec), lora_config(spec, task_type))


def lora_config(spec: JobSpec, task_type: str | None) -> Any:
    """peft's `LoraConfig` of the spec's adapter, or None without one."""
    if spec.adapter is None:
        return None
    from peft import LoraConfig

    return LoraConfig(**lora_config_kwargs(spec.adapter, task_type))


def prepare_quantized(model: Any, spec: JobSpec) -> Any:
    """A quantized base made ready for training an adapter on it (peft's
    `prepare_model_for_kbit_training`); any other model as it is."""
    if spec.quantization is None:
        return model
    import peft

    checkpointing = bool(spec.training_args.get("gradient_checkpointing", False))
    prepare: Any = peft.prepare_model_for_kbit_training  # untyped
    return prepare(model, use_gradient_checkpointing=checkpointing)


def save_merged(model: Any, spec: JobSpec, tokenizer: Any, directory: Path) -> None:
    """The base with the adapter merged in, in the base's own dtype, into `directory`.
    A quantized base is never merged into: the base is loaded again unquantized (in the
    quantization's compute dtype, or the spec's `torch_dtype`) and the trained adapter
    (`model`'s weights) is put on it first."""
    from peft import PeftModel

    if spec.quantization is not None:
        from worker.builders import build_model

        plain = spec.model_copy(update={"quantization": None})
        base = build_model(plain, tokenizer, _label_names(model))
        if spec.model.torch_dtype in (None, "auto"):
            base = base.to(getattr(torch, spec.quantization.compute_dtype))
        staged = directory.parent / f".{directory.name}-adapter"
        model.save_pretrained(str(staged))
        model = PeftModel.from_pretrained(base, str(staged))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(directory))
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory))


def _label_names(model: Any) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None)
    if not id2label or getattr(model.config, "problem_type", None) == "regression":
        return None
    return [id2label[i] for i in sorted(id2label)]
