"""Evaluation metrics the recipes share (`compute_metrics` and
`preprocess_logits_for_metrics` of the Trainer). Runs in the training child only."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import EvalPrediction


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
