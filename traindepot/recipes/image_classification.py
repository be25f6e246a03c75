"""`image-classification`: one class per image, a vision model (ViT and the like).

The image column holds absolute paths of image files under the server's allowed paths
(inline rows, json/csv/parquet files), or the `Image` feature of a Hub dataset; the label
column holds class names or ids (`dataset.label_names`, a ClassLabel's names, or the sorted
distinct labels). Every image is checked before training from its header alone: its bytes
(`TRAINDEPOT_MAX_IMAGE_BYTES`) and its width x height (`TRAINDEPOT_MAX_IMAGE_PIXELS`); a
file that is not an image, a decompression bomb or one over a limit fails the job with
reason `data` naming it. The image processor (`AutoImageProcessor` of the model's
checkpoint, PIL backend; for a model from a config a `ViTImageProcessorPil` of the config's
`image_size`) is applied per batch when the Trainer reads it (`with_transform`), so no pixel
array is stored; `remove_unused_columns` is off for that. Evaluation reports accuracy and
macro F1 from each batch's predicted class. No adapter: peft has no task type for image
classification. The worker side is worker/image_classification.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from traindepot.problems import Problem
from traindepot.recipes.base import Example, Recipe
from traindepot.spec import DatasetSpec, JobSpec, distinct_names, is_local_path

if TYPE_CHECKING:
    from worker.data import Datasets

# A tiny ViT for 8x8 images (scikit-learn's digits): 4 patches of 4x4.
TINY_VIT: dict[str, Any] = {
    "model_type": "vit",
    "image_size": 8,
    "patch_size": 4,
    "num_channels": 3,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}


class ImageDataset(DatasetSpec):
    """The dataset of an `image-classification` job."""

    image_column: str = Field(
        default="image",
        min_length=1,
        description="Absolute paths of image files under the allowed paths, or a Hub "
        "dataset's `Image` feature.",
    )
    label_column: str = Field(default="label", min_length=1)
    label_names: list[str] | None = Field(
        default=None,
        min_length=2,
        description="The class names in id order; null: a ClassLabel's names, or the sorted "
        "distinct string labels.",
    )

    check_names = field_validator("label_names")(distinct_names)


class ImageProcessing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="Resize every image to size x size pixels; null: the processor's size "
        "(a model from a config: its `image_size`, else 224).",
    )


class ImageClassificationSpec(JobSpec):
    """An `image-classification` job."""

    task: Literal["image-classification"]
    dataset: ImageDataset
    images: ImageProcessing = Field(default_factory=ImageProcessing)


class ImageClassificationRecipe(Recipe):
    task = "image-classification"
    spec_model = ImageClassificationSpec
    summary = "One class per image (ViT and the like); reports accuracy and macro F1."
    adapter_task_type = None
    takes_text = False

    def examples(self) -> dict[str, Example]:
        return {
            "image-classification": {
                "summary": "image-classification: a tiny ViT on image files under the allowed"
                " paths",
                "value": {
                    "name": "tiny-vit-digits",
                    "task": "image-classification",
                    "model": {"from_config": dict(TINY_VIT)},
                    "dataset": {
                        "rows": [
                            {"image": f"/srv/traindepot-data/digits/digit-{i}.png", "label": i % 10}
                            for i in range(40)
                        ],
                        "eval_fraction": 0.25,
                        "image_column": "image",
                        "label_column": "label",
                        "label_names": [str(digit) for digit in range(10)],
                    },
                    "training_args": {
                        "max_steps": 50,
                        "per_device_train_batch_size": 32,
                        "learning_rate": 3e-3,
                        "eval_strategy": "steps",
                        "eval_steps": 25,
                        "save_steps": 25,
                        "use_cpu": True,
                    },
                },
            },
        }

    def check(self, spec: JobSpec) -> list[Problem]:
        assert isinstance(spec, ImageClassificationSpec)
        ds = spec.dataset
        problems: list[Problem] = []
        if spec.tokenizer is not None:
            problems.append(
                Problem(
                    ("tokenizer",), "an image-classification job has no tokenizer: leave it out"
                )
            )
        if spec.training_args.get("remove_unused_columns") is True:
            problems.append(
                Problem(
                    ("training_args", "remove_unused_columns"),
                    "must stay false: the images are read and processed per batch from their"
                    f" column `{ds.image_column}`",
                )
            )
        for index, row in enumerate(ds.rows or []):
            value = row.get(ds.image_column)
            if not isinstance(value, str) or not is_local_path(value):
                problems.append(
                    Problem(
                        ("dataset", "rows", index, ds.image_column),
                        "must be the absolute path of an image file under the server's"
                        " allowed paths",
                    )
                )
                if len(problems) >= 10:
                    break
        return problems

    def model_class(self) -> Any:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def processing_class(self, spec: JobSpec) -> Any:
        from worker.image_classification import image_processor

        assert isinstance(spec, ImageClassificationSpec)
        return image_processor(spec)

    def prepare_data(self, spec: JobSpec, tokenizer: Any) -> Datasets:
        from worker.image_classification import prepare_image_data

        assert isinstance(spec, ImageClassificationSpec)
        return prepare_image_data(spec, tokenizer)

    def collator(self, spec: JobSpec, tokenizer: Any) -> Any:
        from transformers import DefaultDataCollator

        return DefaultDataCollator()

    def trainer_class(self) -> Any:
        # ViT's weights are renamed on save: resuming must convert them back.
        from worker.trainers import RenamedWeightsTrainer

        return RenamedWeightsTrainer

    def training_args_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        return {"remove_unused_columns": False}

    def compute_metrics(
        self, spec: JobSpec, data: Datasets
    ) -> Callable[[Any], dict[str, float]] | None:
        from worker.metrics import classification_metrics

        return classification_metrics

    def preprocess_logits_for_metrics(self, spec: JobSpec) -> Callable[[Any, Any], Any] | None:
        from worker.metrics import predicted_class

        return predicted_class

    def card_lines(self, spec: JobSpec) -> list[str]:
        assert isinstance(spec, ImageClassificationSpec)
        ds = spec.dataset
        size = f"{spec.images.size} x {spec.images.size}" if spec.images.size else "the processor's"
        return [
            f"- images: `{ds.image_column}`, labels: `{ds.label_column}`",
            f'- image size: {size}; use it with `pipeline("image-classification")`',
        ]
