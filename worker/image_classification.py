"""The worker side of `image-classification` (traindepot/recipes/image_classification.py):
the image processor, every image checked from its header before training, and the images
decoded and processed per batch (`with_transform`). Runs in the training child."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image, ImageOps, UnidentifiedImageError

from traindepot.localpaths import PathRefused, resolve_allowed
from traindepot.settings import get_settings
from worker.data import Datasets, load_raw, map_rows, require_columns
from worker.errors import DataError
from worker.guarded import model_source
from worker.labels import label_mapping

if TYPE_CHECKING:
    from traindepot.recipes.image_classification import ImageClassificationSpec

# The size of a model from a config that names no `image_size` (ViT's default).
DEFAULT_SIZE = 224


def image_processor(spec: ImageClassificationSpec) -> Any:
    """The checkpoint's `AutoImageProcessor` (PIL backend: no torchvision needed), or for a
    model from a config a `ViTImageProcessorPil` of its `image_size`; `images.size` resizes
    to that square instead."""
    size = spec.images.size
    if spec.model.name_or_path is not None:
        from transformers import AutoImageProcessor

        extra: dict[str, Any] = {"size": {"height": size, "width": size}} if size else {}
        return AutoImageProcessor.from_pretrained(
            model_source(spec.model.name_or_path, "model.name_or_path", weights=False),
            revision=spec.model.revision,
            backend="pil",
            **extra,
        )
    from transformers import ViTImageProcessorPil

    assert spec.model.from_config is not None
    configured = spec.model.from_config.get("image_size")
    side = size or (configured if isinstance(configured, int) else DEFAULT_SIZE)
    return ViTImageProcessorPil(size={"height": side, "width": side})


def _name(value: Any) -> str:
    """How an image is named in an error: its path, or a Hub value's path."""
    if isinstance(value, dict):
        return str(value.get("path") or "an image of the Hub dataset")
    return str(value)


def _source(value: Any) -> Any:
    """What `Image.open` reads: a path, or a Hub value's bytes."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return io.BytesIO(value["bytes"])
    if isinstance(value, dict):
        return value.get("path")
    return value


def checked_image(value: Any, where: str) -> Any:
    """The image `value` (a path string, or a Hub `{"bytes", "path"}`) if it is an image
    within the server's limits, read from its header only; a path is resolved under the
    allowed paths and returned resolved. Anything else is a DataError naming the file."""
    settings = get_settings()
    name = _name(value)
    if isinstance(value, str):
        try:
            value = str(resolve_allowed(value, settings.allowed_paths))
        except PathRefused as exc:
            raise DataError(f"{where}: {exc}") from exc
        size = Path(value).stat().st_size
    elif isinstance(value, dict) and value.get("bytes") is not None:
        size = len(value["bytes"])
    elif isinstance(value, dict) and isinstance(value.get("path"), str):
        size = Path(value["path"]).stat().st_size
    else:
        raise DataError(f"{where}: {value!r:.80} is neither an image file's path nor an image")
    if size > settings.max_image_bytes:
        raise DataError(
            f"{where}: image {name!r} has {size:,} bytes; the server's limit is"
            f" {settings.max_image_bytes:,} (TRAINDEPOT_MAX_IMAGE_BYTES)"
        )
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    try:
        with warnings.catch_warnings():
            # Over the limit but under twice it: PIL warns; the check below refuses it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_source(value)) as image:
                width, height = image.size
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where}: image {name!r} is a decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{where}: {name!r} is not an image PIL can read: {exc}") from exc
    if width * height > settings.max_image_pixels:
        raise DataError(
            f"{where}: image {name!r} is {width} x {height} pixels; the server's limit is"
            f" {settings.max_image_pixels:,} (TRAINDEPOT_MAX_IMAGE_PIXELS)"
        )
    return value


def decoded(value: Any) -> Image.Image:
    """A checked image decoded, turned by its EXIF orientation (as `datasets` decodes
    images) and in RGB."""
    try:
        with Image.open(_source(value)) as image:
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            return upright.convert("RGB")
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {_name(value)!r} cannot be decoded: {exc}") from exc


def prepare_image_data(spec: ImageClassificationSpec, processor: Any) -> Datasets:
    ds = spec.dataset
    train, evaluation = load_raw(ds)
    named = [("train", train)] + ([("evaluation", evaluation)] if evaluation is not None else [])
    require_columns([split for _, split in named], [ds.image_column, ds.label_column])
    names, to_id = label_mapping(
        [split for _, split in named],
        column=ds.label_column,
        label_names=ds.label_names,
        num_labels=None,
    )

    def checked(split: Dataset, split_name: str) -> Dataset:
        if isinstance(split.features[ds.image_column], ImageFeature):
            split = split.cast_column(ds.image_column, ImageFeature(decode=False))

        def check(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
            images = [
                checked_image(value, f"row {index} of the {split_name} split")
                for index, value in zip(indices, batch[ds.image_column], strict=True)
            ]
            return {"image": images, "labels": [to_id(v) for v in batch[ds.label_column]]}

        return map_rows(split, check, split_name).with_transform(transform)

    def transform(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pixels = processor([decoded(v) for v in batch["image"]], return_tensors="pt")
        return {"pixel_values": pixels["pixel_values"], "labels": batch["labels"]}

    return Datasets(
        train=checked(train, "train"),
        eval=checked(evaluation, "evaluation") if evaluation is not None else None,
        label_names=names,
    )
