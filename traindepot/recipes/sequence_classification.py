"""`sequence-classification`: one class per text or text pair (sentiment, NLI, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe
from traindepot.spec import DatasetSpec, JobSpec, distinct_names
from traindepot.spec_examples import tiny_bert_config

if TYPE_CHECKING:
    from worker.data import Datasets


class ClassificationDataset(DatasetSpec):
    """The dataset of a `sequence-classification` job: texts (or pairs) and their class."""

    text_pair_column: str | None = Field(
        default=None, min_length=1, description="The second text of a pair (NLI, QA)."
    )
    label_column: str | None = Field(default=None, min_length=1, description='null: "label".')
    label_names: list[str] | None = Field(
        default=None,
        min_length=2,
        description="The class names, in id order. Labels in the data are these names or "
        "their ids. null: inferred from the data (a ClassLabel's names, the sorted distinct "
        "strings, or ids 0..max).",
    )
    num_labels: int | None = Field(
        default=None,
        ge=2,
        le=100_000,
        description="The number of classes; null: from `label_names` or the data.",
    )

    check_names = field_validator("label_names")(distinct_names)


class SequenceClassificationSpec(JobSpec):
    """A `sequence-classification` job."""

    task: Literal["sequence-classification"]
    dataset: ClassificationDataset


class SequenceClassificationRecipe(Recipe):
    task = "sequence-classification"
    spec_model = SequenceClassificationSpec
    summary = "One class per text or text pair; reports accuracy and macro F1."
    adapter_task_type = "SEQ_CLS"

    def examples(self) -> dict[str, Example]:
        return {
            "sequence-classification": {
                "summary": "sequence-classification: text pairs, given label names, early stopping",
                "value": {
                    "name": "tiny-bert-nli",
                    "task": "sequence-classification",
                    "model": {"from_config": tiny_bert_config()},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {
                        "rows": [
                            {
                                "premise": "A dog runs.",
                                "hypothesis": "An animal moves.",
                                "label": 0,
                            },
                            {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "label": 2},
                            {
                                "premise": "A man eats.",
                                "hypothesis": "Someone is eating.",
                                "label": 0,
                            },
                            {"premise": "A man eats.", "hypothesis": "He is hungry.", "label": 1},
                        ]
                        * 8,
                        "text_column": "premise",
                        "text_pair_column": "hypothesis",
                        "label_column": "label",
                        "label_names": ["entailment", "neutral", "contradiction"],
                        "eval_fraction": 0.25,
                    },
                    "preprocessing": {"max_length": 64, "padding": "longest"},
                    "training_args": {
                        "num_train_epochs": 3,
                        "per_device_train_batch_size": 8,
                        "eval_strategy": "epoch",
                        "save_strategy": "epoch",
                        "load_best_model_at_end": True,
                        "metric_for_best_model": "eval_loss",
                        "use_cpu": True,
                    },
                    "early_stopping": {"patience": 2, "threshold": 0.0},
                    "seed": 13,
                },
            },
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        ds = spec.dataset
        assert isinstance(ds, ClassificationDataset)
        if ds.label_names is not None and ds.num_labels not in (None, len(ds.label_names)):
            return [
                Problem(
                    ("dataset", "num_labels"),
                    f"is {ds.num_labels} but `label_names` has {len(ds.label_names)} names",
                )
            ]
        return []

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.data import load_raw, require_columns, tokenize_texts
        from worker.labels import label_mapping

        ds = spec.dataset
        assert isinstance(ds, ClassificationDataset)
        train, evaluation = load_raw(ds)
        splits = [split for split in (train, evaluation) if split is not None]
        label_column = ds.label_column or "label"
        pair = [ds.text_pair_column] if ds.text_pair_column else []
        require_columns(splits, [ds.text_column, *pair, label_column])
        names, to_id = label_mapping(
            splits, column=label_column, label_names=ds.label_names, num_labels=ds.num_labels
        )
        return tokenize_texts(
            spec,
            tokenizer,
            train,
            evaluation,
            pair_column=ds.text_pair_column,
            labels=(label_column, to_id),
            label_names=names,
        )

    # The default collator pads each batch to its longest example: a no-op when every
    # example was padded to `max_length` already, and right when lengths differ.

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        from worker.metrics import classification_metrics

        return classification_metrics

    def preprocess_logits_for_metrics(self, spec: JobSpec) -> Callable[[Any, Any], Any] | None:
        from worker.metrics import predicted_class

        return predicted_class

    def card_lines(self, spec: JobSpec) -> list[str]:
        ds = spec.dataset
        assert isinstance(ds, ClassificationDataset)
        return [f"- label column: `{ds.label_column or 'label'}`"]
