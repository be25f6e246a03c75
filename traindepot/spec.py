"""The job spec: the contract users write against (docs/architecture.md, "The job spec").

Pure pydantic, no torch: the API validates the shape here, then checks what needs the
installed ``transformers`` or the server's settings in ``traindepot.validation``. Example
specs live in ``traindepot.spec_examples``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    JsonValue,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from traindepot import webhook_urls
from traindepot.webhooks import EVENT_TYPES, EventType

# A Hub repository id: `name` or `owner/name`. Anything else that is not an absolute path
# is refused, so that a relative name can never be read as a directory of the server.
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def is_local_path(name_or_path: str) -> bool:
    """A local path is absolute (`/...`); relative ones (`./x`, `~/x`) are refused."""
    return name_or_path.startswith("/")


def _hub_id_or_absolute_path(value: str | None) -> str | None:
    if value is None or is_local_path(value):
        return value
    if value.startswith(("./", "../", "~", ".")) or "\\" in value:
        raise ValueError(
            f"{value!r} is a relative path: give an absolute path under the server's allowed"
            " paths, or a Hub id like `gpt2` or `owner/name`"
        )
    if not _HUB_ID.match(value) or ".." in value:
        raise ValueError(f"{value!r} is neither an absolute path nor a Hub id like `owner/name`")
    return value


def distinct_names(value: list[str] | None) -> list[str] | None:
    """A validator of the recipes' `label_names`: class names must be distinct."""
    if value is not None and len(set(value)) != len(value):
        raise ValueError("label names must be distinct")
    return value


class _Strict(BaseModel):
    """Unknown fields are an error that names the field, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name_or_path: str | None = Field(
        default=None, min_length=1, description="A hub id (`gpt2`) or a local directory."
    )
    revision: str | None = Field(default=None, min_length=1)
    from_config: dict[str, JsonValue] | None = Field(
        default=None,
        description="Random initialisation from a config: `model_type` plus config overrides.",
    )
    from_job: UUID | None = Field(
        default=None,
        description="The model another job exported (its id): a job of the same tenant that"
        " succeeded; with an adapter, its merged model (`adapter.merge: true`). Its tokenizer"
        " is the default `tokenizer`.",
    )
    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        default=None,
        description="The dtype the weights are loaded in (`dtype=` of `from_pretrained`); "
        "null: float32. Mixed precision is `training_args.bf16`/`fp16`.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run the Python code of a model repository; refused unless the server "
        "allows it.",
    )

    check_name = field_validator("name_or_path")(_hub_id_or_absolute_path)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [self.name_or_path, self.from_config, self.from_job]
        if sum(source is not None for source in given) != 1:
            raise ValueError("give exactly one of `name_or_path`, `from_config` or `from_job`")
        if self.from_config is not None:
            model_type = self.from_config.get("model_type")
            if not isinstance(model_type, str) or not model_type:
                raise ValueError('`from_config` needs a `model_type` string, e.g. "gpt2"')
        if self.revision is not None and self.name_or_path is None:
            raise ValueError("`revision` applies to `name_or_path` only")
        return self

    def source_loc(self) -> str:
        """The field that names the model's source (`name_or_path`, `from_config`...)."""
        if self.from_config is not None:
            return "from_config"
        return "from_job" if self.from_job is not None else "name_or_path"


class TokenizerSpec(_Strict):
    name_or_path: str | None = Field(default=None, min_length=1)
    revision: str | None = Field(default=None, min_length=1)
    builtin: Literal["byte-level"] | None = Field(
        default=None, description="`byte-level`: 256 byte tokens plus specials, needs no files."
    )

    check_name = field_validator("name_or_path")(_hub_id_or_absolute_path)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name_or_path is None) == (self.builtin is None):
            raise ValueError("give exactly one of `name_or_path` or `builtin`")
        return self


class HubDataset(_Strict):
    path: str = Field(min_length=1, description="A Hub dataset id; local data goes in `files`.")
    name: str | None = Field(default=None, min_length=1, description="The configuration name.")
    split: str = Field(
        default="train",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+(\[[0-9%:+ -]*\])?$",
        description="A split, slicing allowed: `train[:1%]`, `train[10:200]`.",
    )
    revision: str | None = Field(default=None, min_length=1)

    @field_validator("path")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not _HUB_ID.match(value) or ".." in value:
            raise ValueError(
                f"{value!r} is not a Hub dataset id (`name` or `owner/name`);"
                " for local files use `dataset.files`"
            )
        return value


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

    @model_validator(mode="after")
    def _format_known(self) -> Self:
        self.resolved_format()
        return self


class DatasetSpec(_Strict):
    hub: HubDataset | None = None
    files: FilesDataset | None = None
    rows: list[dict[str, JsonValue]] | None = Field(
        default=None, min_length=1, description="Inline rows (bounded by the server)."
    )
    text_column: str = Field(default="text", min_length=1)
    max_samples: int | None = Field(
        default=None, gt=0, description="Keep the first N training rows (before any split)."
    )
    eval_split: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+(\[[0-9%:+ -]*\])?$",
        description="`hub` only: the split to evaluate on, e.g. `validation`.",
    )
    eval_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Hold out this fraction of the training rows."
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed of `eval_fraction`.")

    def has_eval(self) -> bool:
        """Whether the spec gives evaluation data."""
        return (
            self.eval_split is not None
            or self.eval_fraction is not None
            or (self.files is not None and self.files.validation is not None)
        )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [n for n in ("hub", "files", "rows") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one dataset source of `hub`, `files` or `rows`"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class Preprocessing(_Strict):
    max_length: int = Field(default=128, gt=0, le=1_048_576)
    padding: Literal["max_length", "longest", "do_not_pad"] = "max_length"
    truncation: bool = True


class Limits(_Strict):
    max_runtime_seconds: float | None = Field(default=None, gt=0)
    max_restarts: int = Field(default=3, ge=0, le=100)


class EarlyStopping(_Strict):
    patience: int = Field(default=3, ge=1)
    threshold: float = Field(default=0.0, ge=0)


class WebhookTarget(_Strict):
    url: str = Field(
        min_length=1,
        max_length=webhook_urls.MAX_URL_LENGTH,
        description="An http(s) URL resolving to public addresses only (unless the server "
        "allows a network); it gets a signed POST per event (Standard Webhooks).",
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        min_length=1,
        description="The events to send; default: all of them.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return webhook_urls.check_syntax(value)


class Notify(_Strict):
    webhooks: list[WebhookTarget] = Field(
        default_factory=list,
        max_length=5,
        description="This job's own subscriptions; each one's signing secret is in the "
        "response to the submit (`webhooks`), and only there.",
    )


class HubSync(_Strict):
    repo_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$",
        description="The model repository to push to (`owner/name`; created if missing).",
    )
    strategy: Literal["end", "every_save", "checkpoint"] = Field(
        default="end",
        description="As TrainingArguments' `hub_strategy`: `end` pushes the final model;"
        " `every_save` also the model at each checkpoint; `checkpoint` also the whole last"
        " checkpoint in `last-checkpoint/`.",
    )
    private: bool = Field(default=True, description="Create the repository private.")


class Resources(_Strict):
    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Devices the job needs at once: GPUs, or slots of a CPU-only worker. It"
        " goes only to a worker with this many free (their ids in `CUDA_VISIBLE_DEVICES`)."
        " 2 or more: one rank per device, started with `torch.distributed.run` (DDP, or FSDP"
        " or DeepSpeed when `training_args` ask; gloo on CPU slots); rank 0 reports."
        " With `nodes` > 1: this many devices on each node.",
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Workers the job spans: `gpus` devices on each of `nodes` workers, started"
        " together (a gang) or not at all. `training_args` describe one rank: the global batch"
        " is nodes x gpus x per-device batch x accumulation. Rank 0 of node 0 reports.",
    )


class LoraAdapter(_Strict):
    """A LoRA adapter (peft): the base model is frozen, low-rank updates are trained."""

    type: Literal["lora"] = Field(default="lora", description="`lora` (peft's LoRA).")
    r: int = Field(
        default=8, ge=1, description="The rank; at most the server's TRAINDEPOT_MAX_ADAPTER_RANK."
    )
    alpha: float = Field(default=16, gt=0, description="`lora_alpha`: updates scale by alpha/r.")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="`lora_dropout`.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        default="all-linear",
        description='The modules that get an update: "all-linear" (every linear layer but the'
        " output head), or names (`c_attn`, `query`...): a module matches when its name is or"
        " ends with `.<name>`.",
    )
    modules_to_save: list[str] | None = Field(
        default=None,
        description="Modules trained in full and saved with the adapter (a new head); the"
        " classification head of `sequence-classification` is added by peft itself.",
    )
    merge: bool = Field(
        default=False,
        description="Also export the model with the adapter merged in (`model/merged/`), in"
        " the base's own dtype (a quantized base is loaded unquantized to merge).",
    )

    @field_validator("target_modules", "modules_to_save")
    @classmethod
    def _names(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one module name")
            for name in value:
                if not re.fullmatch(r"[A-Za-z0-9_.]{1,200}", name):
                    raise ValueError(f"{name!r} is not a module name (letters, digits, _ and .)")
        return value


class Quantization(_Strict):
    """QLoRA: the base is loaded quantized with bitsandbytes (CUDA only) and trained
    through its adapter."""

    bits: Literal[4, 8] = Field(description="4 (NF4/FP4) or 8 (LLM.int8).")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit only.")
    double_quant: bool = Field(default=True, description="4-bit only: quantize the constants.")
    compute_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        default="bfloat16", description="4-bit only: the dtype of the matrix products."
    )


# The task of a spec that names none: specs written before tasks existed train a causal LM.
DEFAULT_TASK = "causal-lm"


class JobSpec(_Strict):
    """The fields every job has. Each recipe's spec model (traindepot/recipes/) subclasses
    it with `task: Literal[...]` and its own `dataset`/`preprocessing` models and sections.

    `JobSpec.model_validate(data)`, and `JobSpec` as a field or a request body, validates
    with the model of the recipe that `data["task"]` names (`causal-lm` when absent) and
    returns an instance of it, so errors name fields as the user wrote them (no union tag in
    `loc`). A field that belongs to another recipe's spec (`label_names` on a causal-lm
    job) is set aside, not refused here: `other_tasks_fields` lists it and the submit's
    checks report it, naming the tasks it applies to. In the JSON Schema `JobSpec` is the
    union of the recipes' models, discriminated by `task`."""

    name: str = Field(min_length=1, max_length=200)
    task: str = Field(default=DEFAULT_TASK, description="The recipe: what kind of training.")
    model: ModelSpec
    tokenizer: TokenizerSpec | None = Field(
        default=None, description="null: the model's own tokenizer."
    )
    dataset: DatasetSpec
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    adapter: LoraAdapter | None = Field(
        default=None,
        description="Train an adapter instead of every weight (recipes that take one).",
    )
    quantization: Quantization | None = Field(
        default=None, description="Load the base quantized (QLoRA): needs an adapter and CUDA."
    )
    training_args: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Any field of the installed TrainingArguments except the server-owned ones.",
    )
    resume_from_checkpoint: bool | UUID | None = Field(
        default=None,
        description="true: this job's own last complete checkpoint (none yet: start fresh);"
        " a job id: continue from that job's last complete checkpoint (the job must exist).",
    )
    early_stopping: EarlyStopping | None = Field(
        default=None,
        description="Stop when `training_args.metric_for_best_model` stops improving; needs"
        " evaluation data and an `eval_strategy`.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seeds the model's initialisation and the training; null:"
        " `training_args.seed` (default 42).",
    )
    limits: Limits = Field(default_factory=Limits)
    resources: Resources = Field(default_factory=Resources)
    queue: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    priority: int = Field(default=5, ge=0, le=9, description="9 is served first.")
    tags: dict[str, str] = Field(default_factory=dict, max_length=50)
    notify: Notify | None = Field(
        default=None,
        description="Webhooks told of this job's status changes (per tenant: `POST /webhooks`).",
    )
    hub: HubSync | None = Field(
        default=None,
        description="Push the model to the Hugging Face Hub (`HF_ENDPOINT` of the workers),"
        " with the tenant's `hf_token` secret (`PUT /tenants/{t}/secrets/hf_token`). A failed"
        " push does not fail the job: it is in `progress.hub`.",
    )

    # (where, the tasks it belongs to) of each field set aside for another recipe's spec.
    _other_tasks_fields: list[tuple[tuple[str, ...], list[str]]] = PrivateAttr(default_factory=list)

    @property
    def other_tasks_fields(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """Fields this job gave that only other tasks' specs have, with those tasks."""
        return list(self._other_tasks_fields)

    @model_validator(mode="wrap")
    @classmethod
    def _recipe_model(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        if cls is JobSpec:
            from traindepot import recipes

            spec: Self = recipes.validate_spec(data)  # type: ignore[assignment]
            return spec
        if not isinstance(data, dict):
            return handler(data)
        from traindepot import recipes

        kept, aside = recipes.set_aside_other_tasks_fields(cls, data)
        validated = handler(kept)
        validated._other_tasks_fields = aside
        return validated

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if cls is not JobSpec:
            return handler(core_schema)
        from traindepot import recipes

        return recipes.union_json_schema(handler)
