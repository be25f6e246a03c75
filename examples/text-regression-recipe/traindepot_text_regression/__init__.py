"""`text-regression`: one number per text, a recipe from outside traindepot.

The spec adds `dataset.target_column`; the model is a sequence-classification head with one
output (`problem_type: regression`, an MSE loss); evaluation reports MSE and MAE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from traindepot.problems import Problem
from traindepot.recipes import Example, Recipe
from traindepot.spec import DatasetSpec, JobSpec

TINY_BERT = {
    "model_type": "bert",
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


class RegressionDataset(DatasetSpec):
    """Texts and the number each one should score."""

    target_column: str = Field(default="target", min_length=1, description="The numbers.")


class TextRegressionSpec(JobSpec):
    """A `text-regression` job."""

    task: Literal["text-regression"]
    dataset: RegressionDataset


def _target(column: str) -> Callable[[Any], float]:
    def to_float(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            from worker.errors import DataError

            raise DataError(f"target {value!r} in column {column!r} is not a number")
        return float(value)

    return to_float


def regression_metrics(prediction: Any) -> dict[str, float]:
    import numpy as np

    predicted = np.asarray(prediction.predictions).reshape(-1)
    targets = np.asarray(prediction.label_ids).reshape(-1)
    return {
        "mse": float(np.mean((predicted - targets) ** 2)),
        "mae": float(np.mean(np.abs(predicted - targets))),
    }


class TextRegressionRecipe(Recipe):
    task = "text-regression"
    spec_model = TextRegressionSpec
    summary = "One number per text (MSE loss); reports MSE and MAE."
    adapter_task_type = "SEQ_CLS"

    def examples(self) -> dict[str, Example]:
        rows = [{"text": "x" * n, "target": n / 10} for n in range(1, 17)]
        return {
            "text-regression": {
                "summary": "text-regression (a plugin): the length of a text, as a number",
                "value": {
                    "name": "text-length",
                    "task": "text-regression",
                    "model": {"from_config": TINY_BERT},
                    "tokenizer": {"builtin": "byte-level"},
                    "dataset": {"rows": rows, "eval_fraction": 0.25},
                    "preprocessing": {"max_length": 32, "padding": "longest"},
                    "training_args": {"max_steps": 4, "eval_strategy": "steps", "eval_steps": 2,
                                      "use_cpu": True},
                },
            }
        }  # fmt: skip

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec.dataset, RegressionDataset)
        if spec.dataset.target_column == spec.dataset.text_column:
            return [
                Problem(
                    ("dataset", "target_column"),
                    "is the text column too: name the column of the numbers",
                )
            ]
        return []

    def model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_config(self, spec: JobSpec, label_names: list[str] | None) -> dict[str, Any]:
        return {"num_labels": 1, "problem_type": "regression"}

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Any:
        from worker.data import load_raw, require_columns, tokenize_texts

        dataset = spec.dataset
        assert isinstance(dataset, RegressionDataset)
        train, evaluation = load_raw(dataset)
        splits = [split for split in (train, evaluation) if split is not None]
        require_columns(splits, [dataset.text_column, dataset.target_column])
        column = dataset.target_column
        return tokenize_texts(spec, tokenizer, train, evaluation, labels=(column, _target(column)))

    def compute_metrics(self, spec: JobSpec, data: Any) -> Callable[[Any], dict[str, float]]:
        return regression_metrics

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec.dataset, RegressionDataset)
        return [f"- target column: `{spec.dataset.target_column}` (regression)"]
