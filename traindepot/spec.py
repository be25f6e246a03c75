"""The job spec: the contract users write against (see DESIGN.md, "The job spec").

Pure pydantic, no torch: the API validates the shape here, then checks what needs the
installed ``transformers`` or the server's settings in ``traindepot.validation``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator


class _Strict(BaseModel):
    """Unknown fields are an error that names the field, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Task(StrEnum):
    CAUSAL_LM = "causal-lm"
    MASKED_LM = "masked-lm"
    SEQUENCE_CLASSIFICATION = "sequence-classification"


class ModelSpec(_Strict):
    name_or_path: str | None = Field(
        default=None, min_length=1, description="A hub id (`gpt2`) or a local directory."
    )
    revision: str | None = Field(default=None, min_length=1)
    from_config: dict[str, JsonValue] | None = Field(
        default=None,
        description="Random initialisation from a config: `model_type` plus config overrides.",
    )
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("give exactly one of `name_or_path` or `from_config`")
        if self.from_config is not None:
            model_type = self.from_config.get("model_type")
            if not isinstance(model_type, str) or not model_type:
                raise ValueError('`from_config` needs a `model_type` string, e.g. "gpt2"')
            if self.revision is not None:
                raise ValueError("`revision` applies to `name_or_path` only")
        return self


class TokenizerSpec(_Strict):
    name_or_path: str | None = Field(default=None, min_length=1)
    revision: str | None = Field(default=None, min_length=1)
    builtin: Literal["byte-level"] | None = Field(
        default=None, description="`byte-level`: 256 byte tokens plus specials, needs no files."
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name_or_path is None) == (self.builtin is None):
            raise ValueError("give exactly one of `name_or_path` or `builtin`")
        return self


class HubDataset(_Strict):
    path: str = Field(min_length=1)
    name: str | None = None
    split: str = Field(default="train", min_length=1, description="Slicing allowed: `train[:1%]`.")
    revision: str | None = None


FileFormat = Literal["json", "jsonl", "csv", "text", "parquet"]


class FilesDataset(_Strict):
    train: str = Field(min_length=1)
    validation: str | None = Field(default=None, min_length=1)
    format: FileFormat | None = Field(
        default=None, description="Inferred from the train file's extension when absent."
    )

    def resolved_format(self) -> FileFormat:
        if self.format is not None:
            return self.format
        suffix = self.train.rsplit(".", 1)[-1].lower() if "." in self.train else ""
        by_suffix: dict[str, FileFormat] = {
            "json": "json",
            "jsonl": "jsonl",
            "csv": "csv",
            "txt": "text",
            "text": "text",
            "parquet": "parquet",
        }
        if suffix not in by_suffix:
            raise ValueError(f"cannot infer the format of {self.train!r}: set `format`")
        return by_suffix[suffix]


class DatasetSpec(_Strict):
    hub: HubDataset | None = None
    files: FilesDataset | None = None
    rows: list[dict[str, JsonValue]] | None = Field(
        default=None, min_length=1, description="Inline rows (bounded by the server)."
    )
    text_column: str = Field(default="text", min_length=1)
    text_pair_column: str | None = None
    label_column: str | None = None
    max_samples: int | None = Field(default=None, gt=0)
    eval_split: str | None = Field(default=None, min_length=1)
    eval_fraction: float | None = Field(default=None, gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [n for n in ("hub", "files", "rows") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one dataset source of `hub`, `files` or `rows`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.eval_split is not None and self.eval_fraction is not None:
            raise ValueError("give at most one of `eval_split` or `eval_fraction`")
        if self.files is not None:
            self.files.resolved_format()
        return self


class Preprocessing(_Strict):
    max_length: int = Field(default=128, gt=0, le=1_048_576)
    padding: Literal["max_length", "longest", "do_not_pad"] = "max_length"
    truncation: bool = True
    group_texts: bool = Field(
        default=False, description="LM tasks: concatenate texts and cut blocks of `max_length`."
    )


class Limits(_Strict):
    max_runtime_seconds: float | None = Field(default=None, gt=0)
    max_restarts: int = Field(default=3, ge=0, le=100)


class EarlyStopping(_Strict):
    patience: int = Field(default=3, ge=1)
    threshold: float = Field(default=0.0, ge=0)


class JobSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    task: Task = Task.CAUSAL_LM
    model: ModelSpec
    tokenizer: TokenizerSpec | None = Field(
        default=None, description="null: the model's own tokenizer."
    )
    dataset: DatasetSpec
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    training_args: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Any field of the installed TrainingArguments except the server-owned ones.",
    )
    resume_from_checkpoint: bool | UUID | None = Field(
        default=None,
        description="true: this job's own last checkpoint; a job id: continue from that job's.",
    )
    early_stopping: EarlyStopping | None = None
    seed: int | None = None
    limits: Limits = Field(default_factory=Limits)
    queue: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    priority: int = Field(default=5, ge=0, le=9)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tokenizer_needed(self) -> Self:
        if self.tokenizer is None and self.model.from_config is not None:
            raise ValueError(
                "a model `from_config` has no tokenizer of its own: set `tokenizer`"
                ' (e.g. {"builtin": "byte-level"})'
            )
        return self


def example_spec() -> dict[str, Any]:
    """A small offline causal-LM job: used in the OpenAPI docs, the demo and the tests."""
    return {
        "name": "tiny-gpt2-demo",
        "task": "causal-lm",
        "model": {
            "from_config": {
                "model_type": "gpt2",
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 64,
                "n_positions": 128,
            }
        },
        "tokenizer": {"builtin": "byte-level"},
        "dataset": {
            "rows": [{"text": "The quick brown fox jumps over the lazy dog."}] * 16,
            "text_column": "text",
        },
        "preprocessing": {"max_length": 64},
        "training_args": {
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "save_steps": 4,
            "use_cpu": True,
        },
        "tags": {"team": "demo"},
    }
