"""The worker side of `token-classification` (traindepot/recipes/token_classification.py):
tag names, tags aligned to sub-words, entity-level metrics. Runs in the training child."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from datasets import ClassLabel, Dataset, Sequence
from transformers import EvalPrediction, PreTrainedTokenizerBase

from worker.data import Datasets, load_raw, map_rows, require_columns
from worker.errors import DataError

if TYPE_CHECKING:
    from traindepot.recipes.token_classification import TokenClassificationSpec

# The label of a position the loss and the metrics ignore (special tokens, padding, and
# the later sub-words of a word unless `label_all_tokens`).
IGNORED = -100


def _class_label(feature: Any) -> ClassLabel | None:
    """The ClassLabel inside a tags column's feature (`Sequence` or `List` of it)."""
    inner = getattr(feature, "feature", None)
    if isinstance(feature, Sequence) or inner is not None:
        return inner if isinstance(inner, ClassLabel) else None
    return None


def tag_names(splits: list[Dataset], *, column: str, label_names: list[str] | None) -> list[str]:
    """The tag names in id order: given, a ClassLabel sequence's names, or the sorted
    distinct tag strings of every split. Integer tags without names are a DataError."""
    if label_names is not None:
        return list(label_names)
    class_label = _class_label(splits[0].features[column])
    if class_label is not None:
        return list(class_label.names)
    found: set[str] = set()
    for split in splits:
        for row, tags in enumerate(split[column]):
            for tag in tags or []:
                if not isinstance(tag, str):
                    raise DataError(
                        f"row {row}: tag {tag!r} in column {column!r} is not a name; integer"
                        " tags need `dataset.label_names` (or a ClassLabel feature)"
                    )
                found.add(tag)
    if len(found) < 2:
        raise DataError(f"tags column {column!r} has {len(found)} distinct tags; 2 are needed")
    return sorted(found)


def _preview(words: list[Any]) -> str:
    """The start of a row's words, to find it in the data (a split row's index is its
    place in the split, not in the file, when part of the data is held out)."""
    text = " ".join(map(str, words[:8]))
    return repr(text[:60] + ("..." if len(words) > 8 or len(text) > 60 else ""))


def _b_to_i(names: list[str]) -> list[int]:
    """For each tag id, the id a later sub-word of the same word gets with
    `label_all_tokens`: a `B-X` tag's `I-X` where the names have one, else the tag itself."""
    ids = {name: i for i, name in enumerate(names)}
    return [
        ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)
    ]


def align_tags(
    word_ids: list[int | None], tag_ids: list[int], *, label_all_tokens: bool, b_to_i: list[int]
) -> list[int]:
    """One label per token: the word's tag on its first sub-word; -100 on special tokens and
    padding, and on later sub-words unless `label_all_tokens`."""
    labels: list[int] = []
    previous: int | None = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORED)
        elif word != previous:
            labels.append(tag_ids[word])
        else:
            labels.append(b_to_i[tag_ids[word]] if label_all_tokens else IGNORED)
        previous = word
    return labels


def prepare_tagged_data(
    spec: TokenClassificationSpec, tokenizer: PreTrainedTokenizerBase
) -> Datasets:
    ds, pre = spec.dataset, spec.preprocessing
    train, evaluation = load_raw(ds)
    named = [("train", train)] + ([("evaluation", evaluation)] if evaluation is not None else [])
    require_columns([split for _, split in named], [ds.tokens_column, ds.tags_column])
    names = tag_names(
        [split for _, split in named], column=ds.tags_column, label_names=ds.label_names
    )
    ids = {name: i for i, name in enumerate(names)}
    b_to_i = _b_to_i(names)
    padding: bool | str = "max_length" if pre.padding == "max_length" else False

    def tag_id(value: Any, where: str) -> int:
        if isinstance(value, str) and value in ids:
            return ids[value]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return value
        raise DataError(
            f"{where}: tag {value!r} is not one of {names[:20]} (nor an id below {len(names)})"
        )

    def prepare(split: Dataset, split_name: str) -> Dataset:
        def encode(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
            for index, words, tags in zip(
                indices, batch[ds.tokens_column], batch[ds.tags_column], strict=True
            ):
                if not isinstance(words, list) or not isinstance(tags, list):
                    raise DataError(
                        f"row {index} of the {split_name} split: `{ds.tokens_column}` and"
                        f" `{ds.tags_column}` must be lists"
                    )
                if len(words) != len(tags):
                    raise DataError(
                        f"row {index} of the {split_name} split ({_preview(words)}):"
                        f" {len(tags)} tags ({ds.tags_column!r}) for {len(words)} tokens"
                        f" ({ds.tokens_column!r}); give one tag per token"
                    )
            encoded = tokenizer(
                batch[ds.tokens_column],
                is_split_into_words=True,
                truncation=pre.truncation,
                max_length=pre.max_length,
                padding=padding,
            )
            out: dict[str, Any] = dict(encoded)
            out["labels"] = [
                align_tags(
                    encoded.word_ids(i),
                    [tag_id(t, f"row {index} of the {split_name} split") for t in tags],
                    label_all_tokens=pre.label_all_tokens,
                    b_to_i=b_to_i,
                )
                for i, (index, tags) in enumerate(zip(indices, batch[ds.tags_column], strict=True))
            ]
            return out

        return map_rows(split, encode, split_name)

    return Datasets(
        train=prepare(train, "train"),
        eval=prepare(evaluation, "evaluation") if evaluation is not None else None,
        label_names=names,
    )


def entity_metrics(
    names: list[str], *, scheme: str | None
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics`: entity-level precision, recall and F1 (seqeval; strict under
    `scheme` when given) and token accuracy, over the labelled positions (label != -100).
    The predictions are class ids already (`predicted_class` reduces each batch)."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB1, IOB2

    mode: dict[str, Any] = (
        {"mode": "strict", "scheme": {"IOB1": IOB1, "IOB2": IOB2}[scheme]} if scheme else {}
    )

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predicted = np.asarray(predictions)
        labels = np.asarray(prediction.label_ids)
        true_tags: list[list[str]] = []
        predicted_tags: list[list[str]] = []
        for row_predictions, row_labels in zip(predicted, labels, strict=True):
            keep = row_labels != IGNORED
            true_tags.append([names[i] for i in row_labels[keep]])
            predicted_tags.append([names[i] for i in row_predictions[keep]])
        return {
            "precision": float(precision_score(true_tags, predicted_tags, **mode)),
            "recall": float(recall_score(true_tags, predicted_tags, **mode)),
            "f1": float(f1_score(true_tags, predicted_tags, **mode)),
            "accuracy": float(accuracy_score(true_tags, predicted_tags)),
        }

    return compute
