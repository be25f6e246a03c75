"""From a validated spec to the `Trainer`: the core's side. It builds what every job has
(the tokenizer, the model from its config or checkpoint, `TrainingArguments`, the seed, the
callbacks) and asks the job's recipe (traindepot/recipes/) for everything that depends on
the task: the tokenizer's fitness, the data, the model class and its config, the collator,
the metrics and the Trainer itself. Runs in the training child only (imports torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from traindepot.recipes import TrainerParts, recipe_for
from traindepot.settings import get_settings
from traindepot.spec import JobSpec
from traindepot.training_args import job_kwargs
from worker.adapters import apply_adapter, lora_config, prepare_quantized, quantization_kwargs
from worker.byte_tokenizer import byte_level_tokenizer
from worker.data import Datasets, build_datasets
from worker.errors import ConfigError, Reason
from worker.guarded import pretrained_source


def text_tokenizer(spec: JobSpec) -> PreTrainedTokenizerBase:
    """The spec's tokenizer (`tokenizer`, else the model's), with a pad token: what a text
    recipe's `processing_class` starts from."""
    if spec.tokenizer is not None and spec.tokenizer.builtin == "byte-level":
        tokenizer: PreTrainedTokenizerBase = byte_level_tokenizer()
    else:
        # Without a `tokenizer`, the model's own (a `from_job`'s: the one it exported).
        source = spec.tokenizer if spec.tokenizer is not None else spec.model
        what = "tokenizer" if spec.tokenizer is not None else "model"
        tokenizer = AutoTokenizer.from_pretrained(
            pretrained_source(source, what, weights=False), revision=source.revision
        )
    if tokenizer.pad_token is None:
        # GPT-style tokenizers have no pad token; the usual fix, as in the seed example.
        if tokenizer.eos_token is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tokenizer(spec: JobSpec) -> Any:
    """The job's processing class (a tokenizer, or an image processor...), as its recipe
    makes it: by default `text_tokenizer`, made fit by the recipe's `prepare_tokenizer`."""
    return recipe_for(spec).processing_class(spec)


def build_model(spec: JobSpec, tokenizer: Any, label_names: list[str] | None) -> PreTrainedModel:
    """The recipe's model class, from the spec's config or checkpoint, with the config
    values the recipe derives from the data (`label_names`: the classes, if any)."""
    recipe = recipe_for(spec)
    model_class = recipe.model_class()
    extra = recipe.model_config(spec, label_names)
    dtype = (
        getattr(torch, spec.model.torch_dtype)
        if spec.model.torch_dtype not in (None, "auto")
        else spec.model.torch_dtype
    )
    text = isinstance(tokenizer, PreTrainedTokenizerBase)  # not an image processor
    if spec.model.from_config is not None:
        overrides = dict(spec.model.from_config)
        model_type = str(overrides.pop("model_type"))
        if text:
            overrides.setdefault("vocab_size", len(tokenizer))
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            token_id = getattr(tokenizer, name, None)
            if token_id is not None:
                overrides.setdefault(name, token_id)
        try:
            config = AutoConfig.for_model(model_type, **overrides, **extra)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.from_config: {exc}") from exc
        # "auto" means "as the checkpoint was saved"; a model from a config has none.
        model: PreTrainedModel = model_class.from_config(
            config, dtype=None if dtype == "auto" else dtype
        )
    else:
        # safetensors only unless the server allows pickled weights (`torch.load`), and no
        # repository code unless it allows that too (the API refused the spec otherwise).
        settings = get_settings()
        model = model_class.from_pretrained(
            pretrained_source(spec.model, "model", weights=True),
            revision=spec.model.revision,
            dtype=dtype,
            use_safetensors=None if settings.allow_pickle_weights else True,
            trust_remote_code=spec.model.trust_remote_code and settings.allow_trust_remote_code,
            **quantization_kwargs(spec),
            **extra,
        )
    if not text:
        return model
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding) and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def build_collator(spec: JobSpec, tokenizer: Any) -> Any:
    return recipe_for(spec).collator(spec, tokenizer)


def effective_seed(spec: JobSpec) -> int:
    """The spec's `seed`, else `training_args.seed`, else TrainingArguments' default (42)."""
    if spec.seed is not None:
        return spec.seed
    seed = spec.training_args.get("seed", 42)
    return seed if isinstance(seed, int) else 42


def build_training_args(
    spec: JobSpec, output_dir: Path, *, report_to: str = "none"
) -> TrainingArguments:
    """The user's `training_args` over the server's defaults, plus what the server owns
    (`traindepot.training_args.job_kwargs`, which the API's validation builds too)."""
    recipe = recipe_for(spec)
    kwargs = {
        **recipe.training_args_kwargs(spec),
        **job_kwargs(
            spec.training_args, output_dir=str(output_dir), seed=spec.seed, report_to=report_to
        ),
    }
    args_class = recipe.training_args_class()
    try:
        built: TrainingArguments = args_class(**kwargs)
        return built
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training_args: {exc}") from exc


def build_trainer(
    spec: JobSpec,
    output_dir: Path,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    on_phase: Callable[[Reason], None] = lambda phase: None,
    report_to: str = "none",
    prepare: Callable[[JobSpec, Any], Datasets] = build_datasets,
) -> Trainer:
    """The whole `Trainer` of a spec, seeded, built in the job's order. `on_phase` hears
    which part is being built (`data` while the datasets load, else `config`), so that an
    error is classified by where it happened. The Printer and Progress callbacks are
    removed: they mutate the logs dict that `TrainOutput.metrics` shares and print bars."""
    on_phase("config")
    recipe = recipe_for(spec)
    # Seed before the model is built: a `from_config` model's random init follows it.
    set_seed(effective_seed(spec))
    tokenizer = build_tokenizer(spec)
    on_phase("data")
    data = prepare(spec, tokenizer)  # a sweep's trial: through worker/data_cache.py
    on_phase("config")
    # The adapter is the core's, for every recipe that takes one (the API refused it
    # elsewhere): created after the base, so its initialisation follows the same seed. A
    # recipe whose Trainer puts it on itself gets the base and its `peft_config`.
    base = build_model(spec, tokenizer, data.label_names)
    if recipe.trainer_applies_adapter:
        model = prepare_quantized(base, spec)
        peft_config = lora_config(spec, recipe.adapter_task_type)
    else:
        model, peft_config = apply_adapter(base, spec, recipe.adapter_task_type), None
    all_callbacks = list(callbacks)
    if spec.early_stopping is not None:
        all_callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=spec.early_stopping.patience,
                early_stopping_threshold=spec.early_stopping.threshold,
            )
        )
    trainer: Trainer = recipe.build_trainer(
        TrainerParts(
            spec=spec,
            model=model,
            args=build_training_args(spec, output_dir, report_to=report_to),
            data=data,
            tokenizer=tokenizer,
            callbacks=all_callbacks,
            peft_config=peft_config,
        )
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
