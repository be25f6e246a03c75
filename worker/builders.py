"""From a validated spec to the `Trainer`: tokenizer, model, collator and `TrainingArguments`,
with the datasets from ``worker.data``. Runs in the training child only (imports torch)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import EvalLoopOutput

from traindepot.settings import get_settings
from traindepot.spec import JobSpec, Task
from traindepot.training_args import job_kwargs
from worker.byte_tokenizer import byte_level_tokenizer
from worker.data import build_datasets
from worker.errors import ConfigError, Reason
from worker.guarded import model_source

_MODEL_CLASSES: dict[Task, Any] = {
    Task.CAUSAL_LM: AutoModelForCausalLM,
    Task.MASKED_LM: AutoModelForMaskedLM,
    Task.SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
}


def build_tokenizer(spec: JobSpec) -> PreTrainedTokenizerBase:
    if spec.tokenizer is not None and spec.tokenizer.builtin == "byte-level":
        tokenizer: PreTrainedTokenizerBase = byte_level_tokenizer()
    else:
        source = spec.tokenizer if spec.tokenizer is not None else spec.model
        assert source.name_or_path is not None
        tokenizer = AutoTokenizer.from_pretrained(
            model_source(source.name_or_path, "tokenizer.name_or_path", weights=False),
            revision=source.revision,
        )
    if tokenizer.pad_token is None:
        # GPT-style tokenizers have no pad token; the usual fix, as in the seed example.
        if tokenizer.eos_token is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    if spec.task is Task.MASKED_LM and tokenizer.mask_token is None:
        raise ConfigError("task `masked-lm` needs a tokenizer with a mask token")
    return tokenizer


def build_model(
    spec: JobSpec, tokenizer: PreTrainedTokenizerBase, label_names: list[str] | None
) -> PreTrainedModel:
    model_class = _MODEL_CLASSES[spec.task]
    extra: dict[str, Any] = {}
    if label_names is not None:
        extra = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
        }
    dtype = (
        getattr(torch, spec.model.torch_dtype)
        if spec.model.torch_dtype not in (None, "auto")
        else spec.model.torch_dtype
    )
    if spec.model.from_config is not None:
        overrides = dict(spec.model.from_config)
        model_type = str(overrides.pop("model_type"))
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
        assert spec.model.name_or_path is not None
        # safetensors only unless the server allows pickled weights (`torch.load`), and no
        # repository code unless it allows that too (the API refused the spec otherwise).
        settings = get_settings()
        model = model_class.from_pretrained(
            model_source(spec.model.name_or_path, "model.name_or_path", weights=True),
            revision=spec.model.revision,
            dtype=dtype,
            use_safetensors=None if settings.allow_pickle_weights else True,
            trust_remote_code=spec.model.trust_remote_code and settings.allow_trust_remote_code,
            **extra,
        )
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding) and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return model


def build_collator(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> Any:
    if spec.task is Task.CAUSAL_LM:
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if spec.task is Task.MASKED_LM:
        return DataCollatorForLanguageModeling(tokenizer, mlm=True)
    # Pads each batch to its longest example: a no-op when every example was padded to
    # `max_length` already, and right when truncation is off and lengths differ.
    return DataCollatorWithPadding(tokenizer)


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
    kwargs = job_kwargs(
        spec.training_args, output_dir=str(output_dir), seed=spec.seed, report_to=report_to
    )
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training_args: {exc}") from exc


def predicted_class(logits: Any, labels: Any) -> Any:
    """`preprocess_logits_for_metrics` of classification: each batch's logits are reduced to
    the predicted class ids before the Trainer gathers them, so evaluation keeps one integer
    per example instead of `num_labels` floats (memory stays flat on a large eval set)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy and macro F1 in numpy (nothing loaded from a hub). Macro F1 averages the F1
    of every class that occurs in the labels or the predictions; a class never predicted
    and never true does not count."""
    predictions = prediction.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    predicted = np.asarray(predictions).reshape(-1)
    labels = np.asarray(prediction.label_ids).reshape(-1)
    return {
        "accuracy": float((predicted == labels).mean()) if labels.size else 0.0,
        "f1": macro_f1(predicted, labels),
    }


def macro_f1(predicted: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> float:
    classes = np.union1d(predicted, labels)
    if classes.size == 0:
        return 0.0
    scores = []
    for c in classes:
        true_positive = float(np.sum((predicted == c) & (labels == c)))
        false_positive = float(np.sum((predicted == c) & (labels != c)))
        false_negative = float(np.sum((predicted != c) & (labels == c)))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


class JobTrainer(Trainer):
    """The `Trainer`, with the perplexity of a language-modelling job, exp(loss), beside the
    loss of every evaluation (`eval_perplexity`); logged with the other eval metrics."""

    language_modelling = False

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> EvalLoopOutput:
        output: EvalLoopOutput = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        metrics = output.metrics
        loss = None if metrics is None else metrics.get(f"{prefix}_loss")
        # A loss above ~709 has no finite perplexity: none is reported.
        lm = self.language_modelling and metrics is not None
        if lm and isinstance(loss, float) and math.isfinite(loss) and loss < 709:
            assert metrics is not None
            metrics[f"{prefix}_perplexity"] = math.exp(loss)
        return output


def build_trainer(
    spec: JobSpec,
    output_dir: Path,
    *,
    callbacks: Sequence[TrainerCallback] = (),
    on_phase: Callable[[Reason], None] = lambda phase: None,
    report_to: str = "none",
) -> Trainer:
    """The whole `Trainer` of a spec, seeded, built in the job's order. `on_phase` hears
    which part is being built (`data` while the datasets load, else `config`), so that an
    error is classified by where it happened. The Printer and Progress callbacks are
    removed: they mutate the logs dict that `TrainOutput.metrics` shares and print bars."""
    on_phase("config")
    # Seed before the model is built: a `from_config` model's random init follows it.
    set_seed(effective_seed(spec))
    tokenizer = build_tokenizer(spec)
    on_phase("data")
    data = build_datasets(spec, tokenizer)
    on_phase("config")
    model = build_model(spec, tokenizer, data.label_names)
    all_callbacks = list(callbacks)
    if spec.early_stopping is not None:
        all_callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=spec.early_stopping.patience,
                early_stopping_threshold=spec.early_stopping.threshold,
            )
        )
    classification = spec.task is Task.SEQUENCE_CLASSIFICATION
    trainer = JobTrainer(
        model=model,
        args=build_training_args(spec, output_dir, report_to=report_to),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=build_collator(spec, tokenizer),
        processing_class=tokenizer,
        callbacks=all_callbacks,
        compute_metrics=classification_metrics if classification else None,
        preprocess_logits_for_metrics=predicted_class if classification else None,
    )
    trainer.language_modelling = spec.task in (Task.CAUSAL_LM, Task.MASKED_LM)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
