"""From a validated spec to the pieces `Trainer` needs: tokenizer, datasets, model, collator
and `TrainingArguments`. Runs in the training child only (imports torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from traindepot.settings import get_settings
from traindepot.spec import DatasetSpec, JobSpec, Task
from worker.byte_tokenizer import byte_level_tokenizer
from worker.errors import ConfigError, DataError, Reason
from worker.guarded import data_file, model_source

_MODEL_CLASSES: dict[Task, Any] = {
    Task.CAUSAL_LM: AutoModelForCausalLM,
    Task.MASKED_LM: AutoModelForMaskedLM,
    Task.SEQUENCE_CLASSIFICATION: AutoModelForSequenceClassification,
}

_FILE_LOADERS = {
    "json": "json",
    "jsonl": "json",
    "csv": "csv",
    "text": "text",
    "parquet": "parquet",
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


@dataclass
class Datasets:
    train: Dataset
    eval: Dataset | None
    label_names: list[str] | None


def load_raw(spec: DatasetSpec) -> tuple[Dataset, Dataset | None]:
    """The train and (if asked for) eval splits, before tokenisation."""
    evaluation: Dataset | None = None
    if spec.rows is not None:
        train = Dataset.from_list(spec.rows)
    elif spec.files is not None:
        files = {"train": data_file(spec.files.train, "dataset.files.train")}
        if spec.files.validation is not None:
            files["validation"] = data_file(spec.files.validation, "dataset.files.validation")
        loaded = load_dataset(_FILE_LOADERS[spec.files.resolved_format()], data_files=files)
        assert isinstance(loaded, DatasetDict)
        train = loaded["train"]
        evaluation = loaded.get("validation")
    else:
        assert spec.hub is not None
        hub = spec.hub
        train = load_dataset(hub.path, hub.name, split=hub.split, revision=hub.revision)
        if spec.eval_split is not None:
            evaluation = load_dataset(
                hub.path, hub.name, split=spec.eval_split, revision=hub.revision
            )
    if spec.max_samples is not None:
        train = train.select(range(min(spec.max_samples, len(train))))
    if spec.eval_fraction is not None:
        parts = train.train_test_split(test_size=spec.eval_fraction, seed=spec.seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation


def _require_columns(dataset: Dataset, columns: list[str]) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"the dataset has no column {', '.join(map(repr, missing))}; "
            f"its columns are {dataset.column_names} (set `dataset.text_column` and friends)"
        )


def label_mapping(
    spec: DatasetSpec, splits: list[Dataset]
) -> tuple[list[str], Callable[[Any], int]]:
    """The class names (in id order) and a function from a label in the data to its id.

    Given `label_names`: labels are those names or their ids. Otherwise a `ClassLabel`
    column gives its names; integer labels are ids 0..max (or 0..num_labels-1), named like
    transformers' defaults (`LABEL_0`); string labels are the sorted distinct strings of
    every split. Anything else (floats, missing labels) is a DataError naming the value."""
    column = spec.label_column or "label"
    feature = splits[0].features[column]
    values = [v for split in splits for v in split[column]]
    names: list[str]
    if spec.label_names is not None:
        names = list(spec.label_names)
    elif isinstance(feature, ClassLabel):
        names = list(feature.names)
    elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        count = spec.num_labels or max(values) + 1
        names = [f"LABEL_{i}" for i in range(max(count, 2))]
    elif values and all(isinstance(v, str) for v in values):
        names = sorted(set(values))
    else:
        bad = next((v for v in values if not isinstance(v, int | str) or isinstance(v, bool)), None)
        raise DataError(
            f"label column {column!r}: labels must be all integers or all strings;"
            f" found {bad!r} (sequence-classification; regression is not supported)"
        )
    if spec.num_labels is not None and spec.num_labels != len(names):
        raise DataError(
            f"`dataset.num_labels` is {spec.num_labels} but the data has"
            f" {len(names)} classes: {names[:20]}"
        )
    if len(names) < 2:
        raise DataError(f"label column {column!r} has {len(names)} class; at least 2 are needed")
    ids = {name: i for i, name in enumerate(names)}

    def to_id(value: Any) -> int:
        if isinstance(value, str) and value in ids:
            return ids[value]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return value
        raise DataError(
            f"label {value!r} in column {column!r} is not one of the {len(names)} classes"
            f" {names[:20]} (nor an id below {len(names)})"
        )

    return names, to_id


def build_datasets(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> Datasets:
    ds, pre = spec.dataset, spec.preprocessing
    train, evaluation = load_raw(ds)
    splits = [split for split in (train, evaluation) if split is not None]
    columns = [ds.text_column] + ([ds.text_pair_column] if ds.text_pair_column else [])
    if spec.task is Task.SEQUENCE_CLASSIFICATION:
        columns.append(ds.label_column or "label")
    for split in splits:
        _require_columns(split, columns)

    label_names: list[str] | None = None
    to_id: Callable[[Any], int] | None = None
    if spec.task is Task.SEQUENCE_CLASSIFICATION:
        label_names, to_id = label_mapping(ds, splits)

    lm = spec.task in (Task.CAUSAL_LM, Task.MASKED_LM)
    padding: bool | str = (
        False
        if (lm and pre.group_texts) or pre.padding == "do_not_pad"
        else ("max_length" if pre.padding == "max_length" else False)
    )

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [t if isinstance(t, str) else "" for t in batch[ds.text_column]]
        pairs = batch[ds.text_pair_column] if ds.text_pair_column else None
        encoded = tokenizer(
            texts,
            pairs,
            truncation=pre.truncation and not (lm and pre.group_texts),
            max_length=pre.max_length,
            padding=padding,
        )
        out: dict[str, Any] = dict(encoded)
        if to_id is not None:
            out["labels"] = [to_id(v) for v in batch[ds.label_column or "label"]]
        return out

    def group(batch: dict[str, list[Any]]) -> dict[str, Any]:
        size = pre.max_length
        joined = {k: list(chain.from_iterable(batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // size) * size
        return {k: [v[i : i + size] for i in range(0, total, size)] for k, v in joined.items()}

    def prepare(split: Dataset) -> Dataset:
        out = split.map(tokenize, batched=True, remove_columns=split.column_names)
        if lm and pre.group_texts:
            out = out.map(group, batched=True)
        if len(out) == 0:
            hint = (
                f": the texts together are shorter than one block of {pre.max_length} tokens"
                " (lower `preprocessing.max_length` or turn off `group_texts`)"
                if lm and pre.group_texts
                else ""
            )
            raise DataError(f"the dataset has no examples left after preprocessing{hint}")
        return out

    return Datasets(
        train=prepare(train),
        eval=prepare(evaluation) if evaluation is not None else None,
        label_names=label_names,
    )


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
    """The user's `training_args` plus what the server owns. Jobs report to no integration
    (`report_to` is for bench/overhead.py's comparison with one)."""
    kwargs: dict[str, Any] = dict(spec.training_args)
    if spec.seed is not None:
        kwargs["seed"] = spec.seed
    try:
        return TrainingArguments(
            output_dir=str(output_dir),
            report_to=report_to,
            push_to_hub=False,
            disable_tqdm=True,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"training_args: {exc}") from exc


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
    trainer = Trainer(
        model=model,
        args=build_training_args(spec, output_dir, report_to=report_to),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=build_collator(spec, tokenizer),
        processing_class=tokenizer,
        callbacks=all_callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
