"""Local paths checked again in the training child, right before they are opened.

The API checked them when the job was submitted; the job may then have waited in the queue
while someone swapped a symlink. Here each path is resolved, checked against the server's
allowed paths (and a model directory file by file), and the *resolved* path is what the
builders open. A refusal is a `ConfigError` (model, tokenizer) or a `DataError` (dataset).
"""

from __future__ import annotations

from pathlib import Path

from traindepot.exported_models import NoExportedModel, exported_model_dir
from traindepot.localpaths import PathRefused, model_dir_problems, resolve_allowed
from traindepot.settings import get_settings
from traindepot.spec import ModelSpec, TokenizerSpec, is_local_path
from worker.errors import ConfigError, DataError

__all__ = ["data_file", "model_source", "pretrained_source"]


def model_source(name_or_path: str, what: str, *, weights: bool) -> str:
    """A Hub id as given; a local model (or tokenizer) directory resolved and checked."""
    if not is_local_path(name_or_path):
        return name_or_path
    settings = get_settings()
    try:
        path = resolve_allowed(name_or_path, settings.allowed_paths)
    except PathRefused as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    problems = model_dir_problems(path, allow_pickle=settings.allow_pickle_weights or not weights)
    if problems:
        raise ConfigError(f"{what}: " + "; ".join(problems))
    return str(path)


def pretrained_source(source: ModelSpec | TokenizerSpec, what: str, *, weights: bool) -> str:
    """Where a pretrained model (or tokenizer) is loaded from: the directory of the model a
    `from_job` exported (`traindepot.exported_models`), else `model_source(name_or_path)`.
    `what` names the section in errors (`model`, `tokenizer`)."""
    if isinstance(source, ModelSpec) and source.from_job is not None:
        try:
            return str(exported_model_dir(source.from_job))
        except NoExportedModel as exc:  # removed since the submit
            raise ConfigError(f"{what}.from_job: {exc}") from exc
    assert source.name_or_path is not None
    return model_source(source.name_or_path, f"{what}.name_or_path", weights=weights)


def data_file(raw: str, what: str) -> str:
    """A dataset file resolved, checked and within the size limit."""
    settings = get_settings()
    try:
        path = resolve_allowed(raw, settings.allowed_paths)
    except PathRefused as exc:
        raise DataError(f"{what}: {exc}") from exc
    size = Path(path).stat().st_size
    if size > settings.max_dataset_file_bytes:
        raise DataError(
            f"{what}: the file has {size:,} bytes; the server's limit is"
            f" {settings.max_dataset_file_bytes:,} (TRAINDEPOT_MAX_DATASET_FILE_BYTES)"
        )
    return str(path)
