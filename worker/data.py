"""The data machinery every recipe shares: raw splits loaded from inline rows, files or the
Hub (and split), column checks, and text tokenisation (grouped into blocks for language
modelling). What a task does with them is its recipe's `prepare_data`
(traindepot/recipes/). Runs in the training child only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from traindepot.settings import get_settings
from traindepot.spec import DatasetSpec, JobSpec
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
    """A recipe's prepared data: what the Trainer trains and evaluates on, the class names
    (in id order) of a task that has classes, and whatever else the recipe's metrics need
    (`extra`: e.g. the raw evaluation examples for a post-processing step)."""

    train: Dataset
    eval: Dataset | None
    label_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
    limit = get_settings().max_dataset_rows
    if len(train) > limit:
        raise DataError(
            f"the train split has {len(train):,} rows, over this server's limit of {limit:,}"
            " (TRAINDEPOT_MAX_DATASET_ROWS): set dataset.max_samples to train on fewer"
        )
    if spec.eval_fraction is not None:
        parts = train.train_test_split(test_size=spec.eval_fraction, seed=spec.seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation


def require_columns(splits: list[Dataset], columns: list[str]) -> None:
    """Each split has every column of `columns`, else a DataError naming what is missing."""
    for dataset in splits:
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise DataError(
                f"the dataset has no column {', '.join(map(repr, missing))}; its columns are"
                f" {dataset.column_names} (set `dataset.text_column` and friends)"
            )


def map_rows(split: Dataset, encode: Callable[..., dict[str, Any]], split_name: str) -> Dataset:
    """`split` mapped by batches through `encode(batch, indices)` (the indices name a bad
    row in a DataError), its raw columns dropped; an empty result is a DataError."""
    out = split.map(encode, batched=True, with_indices=True, remove_columns=split.column_names)
    if len(out) == 0:
        raise DataError(f"the {split_name} split has no examples")
    return out


def require_fast_tokenizer(tokenizer: Any, task: str, why: str) -> Any:
    """`tokenizer` if it is a fast (Rust) one, else a ConfigError: `word_ids()` and offset
    mappings exist only there."""
    if not getattr(tokenizer, "is_fast", False):
        from worker.errors import ConfigError

        raise ConfigError(f"task `{task}` needs a fast tokenizer: {why}")
    return tokenizer


def build_datasets(spec: JobSpec, tokenizer: PreTrainedTokenizerBase) -> Datasets:
    """The job's datasets, as its recipe prepares them."""
    from traindepot.recipes import recipe_for

    return recipe_for(spec).prepare_data(spec, tokenizer)


def tokenize_texts(
    spec: JobSpec,
    tokenizer: PreTrainedTokenizerBase,
    train: Dataset,
    evaluation: Dataset | None,
    *,
    pair_column: str | None = None,
    labels: tuple[str, Callable[[Any], Any]] | None = None,
    label_names: list[str] | None = None,
    group_texts: bool = False,
) -> Datasets:
    """Tokenise `dataset.text_column` (with `pair_column` as the second text) of both
    splits under `spec.preprocessing`; `labels`: (column, to id) gives each example its
    `labels`; `group_texts`: concatenate the texts and cut blocks of `max_length` (language
    modelling). The raw columns are dropped."""
    ds, pre = spec.dataset, spec.preprocessing
    padding: bool | str = (
        False
        if group_texts or pre.padding == "do_not_pad"
        else ("max_length" if pre.padding == "max_length" else False)
    )

    def tokenize(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [t if isinstance(t, str) else "" for t in batch[ds.text_column]]
        pairs = batch[pair_column] if pair_column else None
        encoded = tokenizer(
            texts,
            pairs,
            truncation=pre.truncation and not group_texts,
            max_length=pre.max_length,
            padding=padding,
        )
        out: dict[str, Any] = dict(encoded)
        if labels is not None:
            column, to_id = labels
            out["labels"] = [to_id(v) for v in batch[column]]
        return out

    def group(batch: dict[str, list[Any]]) -> dict[str, Any]:
        size = pre.max_length
        joined = {k: list(chain.from_iterable(batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // size) * size
        return {k: [v[i : i + size] for i in range(0, total, size)] for k, v in joined.items()}

    def prepare(split: Dataset) -> Dataset:
        out = split.map(tokenize, batched=True, remove_columns=split.column_names)
        if group_texts:
            out = out.map(group, batched=True)
        if len(out) == 0:
            hint = (
                f": the texts together are shorter than one block of {pre.max_length} tokens"
                " (lower `preprocessing.max_length` or turn off `group_texts`)"
                if group_texts
                else ""
            )
            raise DataError(f"the dataset has no examples left after preprocessing{hint}")
        return out

    return Datasets(
        train=prepare(train),
        eval=prepare(evaluation) if evaluation is not None else None,
        label_names=label_names,
    )
