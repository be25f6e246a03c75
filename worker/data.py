"""The job's datasets: loaded from inline rows, files or the Hub, split, labelled and
tokenised (grouped into blocks for language modelling). Runs in the training child only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from traindepot.spec import DatasetSpec, JobSpec, Task
from worker.errors import DataError
from worker.guarded import data_file

_FILE_LOADERS = {
    "json": "json",
    "jsonl": "json",
    "csv": "csv",
    "text": "text",
    "parquet": "parquet",
}


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
