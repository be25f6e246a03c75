"""Class labels in the data: the class names of a task with classes and the mapping from a
label as the data writes it to its id. Shared by the recipes whose examples have a class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from datasets import ClassLabel, Dataset

from worker.errors import DataError


def label_mapping(
    splits: list[Dataset],
    *,
    column: str,
    label_names: list[str] | None,
    num_labels: int | None,
) -> tuple[list[str], Callable[[Any], int]]:
    """The class names (in id order) and a function from a label in the data to its id.

    Given `label_names`: labels are those names or their ids. Otherwise a `ClassLabel`
    column gives its names; integer labels are ids 0..max (or 0..num_labels-1), named like
    transformers' defaults (`LABEL_0`); string labels are the sorted distinct strings of
    every split. Anything else (floats, missing labels) is a DataError naming the value."""
    feature = splits[0].features[column]
    values = [v for split in splits for v in split[column]]
    names: list[str]
    if label_names is not None:
        names = list(label_names)
    elif isinstance(feature, ClassLabel):
        names = list(feature.names)
    elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        count = num_labels or max(values) + 1
        names = [f"LABEL_{i}" for i in range(max(count, 2))]
    elif values and all(isinstance(v, str) for v in values):
        names = sorted(set(values))
    else:
        bad = next((v for v in values if not isinstance(v, int | str) or isinstance(v, bool)), None)
        raise DataError(
            f"label column {column!r}: labels must be all integers or all strings;"
            f" found {bad!r} (sequence-classification; regression is not supported)"
        )
    if num_labels is not None and num_labels != len(names):
        raise DataError(
            f"`dataset.num_labels` is {num_labels} but the data has"
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
