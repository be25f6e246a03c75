"""A plain `Trainer.train()` script after the transformers image classification guide: a
`datasets` dataset of images (`cast_column(..., Image())` on a column of file paths), the
labels' `id2label`/`label2id`, an image processor applied per batch with `with_transform`,
`remove_unused_columns=False`, `DefaultDataCollator`, `AutoModelForImageClassification`
and `compute_metrics` with accuracy and macro F1 (scikit-learn's; `evaluate` needs the Hub).

The guide's torchvision augmentations are left out (torchvision is not installed; the
processor alone resizes, rescales and normalises). The model is a ViT from a config, so the
processor is built (`ViTImageProcessorPil`, the slow one) instead of loaded from a
checkpoint. Imports nothing of the project. Used by
tests/integration/test_seq2seq_and_images.py beside the service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets import Image, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    DefaultDataCollator,
    Trainer,
    TrainingArguments,
    ViTImageProcessorPil,
    set_seed,
)


def image_classification_on_files(
    train_file: Path,
    validation_file: Path,
    *,
    labels: list[str],
    image_size: int,
    model_config: dict[str, Any],
    training_args: dict[str, Any],
    output_dir: Path,
) -> tuple[Any, list[dict[str, Any]]]:
    """jsonl files of `{"image": path, "label": id}`; returns the TrainOutput and the
    Trainer's log history."""
    from sklearn.metrics import f1_score

    set_seed(training_args["seed"])
    raw = load_dataset(
        "json", data_files={"train": str(train_file), "validation": str(validation_file)}
    ).cast_column("image", Image())
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))
    image_processor = ViTImageProcessorPil(size={"height": image_size, "width": image_size})

    def transforms(examples: dict[str, list[Any]]) -> dict[str, Any]:
        images = [img.convert("RGB") for img in examples["image"]]
        examples["pixel_values"] = image_processor(images, return_tensors="pt")["pixel_values"]
        del examples["image"]
        return examples

    dataset = raw.with_transform(transforms)

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, references = eval_pred
        predictions = np.argmax(predictions, axis=1)
        return {
            "accuracy": float((predictions == references).mean()),
            "f1": float(f1_score(references, predictions, average="macro")),
        }

    overrides = {k: v for k, v in model_config.items() if k != "model_type"}
    config = AutoConfig.for_model(
        model_config["model_type"],
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        **overrides,
    )
    model = AutoModelForImageClassification.from_config(config)  # type: ignore[no-untyped-call]
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir), remove_unused_columns=False, **training_args
        ),
        data_collator=DefaultDataCollator(),
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        processing_class=image_processor,
        compute_metrics=compute_metrics,
    )
    output = trainer.train()
    return output, list(trainer.state.log_history)
