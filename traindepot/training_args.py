"""`training_args` checked against the installed `TrainingArguments`, at POST time.

Four passes, each naming the field it is about:
1. names: server-owned fields, names removed or renamed in transformers 5, unknown names;
2. types: each value against the field's own type hint (strict: `"3"` is not an int);
3. values: enum choices and ranges that `TrainingArguments` leaves to fail later in training;
4. the real thing: `TrainingArguments(**args)` is built, as the worker will build it, and any
   error it raises is a 422 too. Its result is the *effective* TrainingArguments.

Values that depend on the worker's device (`bf16`, `fp16`, `tf32`, ...) are left out of pass 4
(the API host may have no GPU) and checked against the workers' registered devices instead
(`traindepot.device_checks.check_devices`).

transformers is imported lazily (it pulls torch): the first validation pays ~3 s once, and
the API warms it up in the background at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import threading
import typing
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from traindepot.problems import Problem

# Owned by the server: it chooses where a job writes and where it reports.
SERVER_OWNED: dict[str, str] = {
    "output_dir": "the server gives each job its own output directory",
    "logging_dir": "the server keeps each job's logs in its own directory",
    "report_to": "traindepot records every log itself; integrations are not run on workers",
    "project": "it names a project of a reporting integration, and workers run none",
    "push_to_hub": "workers do not push to the Hub; download the checkpoint from the job",
    "resume_from_checkpoint": "use the spec's top-level `resume_from_checkpoint`",
    "overwrite_output_dir": "removed in transformers 5, and each job has its own output directory",
    "disable_tqdm": "progress bars are off on workers; follow the job's events instead",
    "local_rank": "the worker launches a job's ranks itself, one per device of `resources.gpus`",
    "parallelism_config": "the worker sets up a job's parallelism from `resources.gpus`; "
    "an accelerate `ParallelismConfig` object cannot be sent as JSON",
}
SERVER_OWNED_PREFIXES: dict[str, str] = {
    "hub_": "workers do not push to the Hub",
    "push_to_hub_": "workers do not push to the Hub",
    "trackio_": "traindepot records every log itself; integrations are not run on workers",
}
# The server's defaults for what a spec leaves unset, where the library's do not suit a job.
SERVER_DEFAULTS: dict[str, Any] = {
    # Only logged steps are kept and streamed (every `logging_steps`-th step, plus each
    # evaluation and the end-of-train summary). The library's 500 would leave a live chart
    # empty for most of a short run; every step (1) costs a device sync per step on a GPU.
    # Every 10th step draws a curve while a job runs at no measurable cost to training.
    "logging_steps": 10,
    # Checkpoints are kept for resuming and for download, not forever: the newest 3 (the
    # Trainer keeps the best one as well with `load_best_model_at_end`). The final model
    # is saved apart from them (worker/export.py). The library keeps every one.
    "save_total_limit": 3,
}
# Names removed or renamed in transformers 5, with what to write instead.
RENAMED: dict[str, str] = {
    "evaluation_strategy": "`eval_strategy`",
    "no_cuda": "`use_cpu`",
    "use_mps_device": "`use_cpu` (MPS is picked automatically)",
    "warmup_ratio": "`warmup_steps` (a value below 1 is read as a fraction of the total steps)",
    "per_gpu_train_batch_size": "`per_device_train_batch_size`",
    "per_gpu_eval_batch_size": "`per_device_eval_batch_size`",
    "fp16_backend": "`bf16` or `fp16` (the backend is chosen automatically)",
    "half_precision_backend": "`bf16` or `fp16` (the backend is chosen automatically)",
    "fp16_opt_level": "`fp16` (apex is no longer used)",
    "save_safetensors": "nothing: checkpoints are always safetensors in transformers 5",
    "include_inputs_for_metrics": '`include_for_metrics: ["inputs"]`',
    "group_by_length": '`train_sampling_strategy: "group_by_length"`',
    "split_batches": '`accelerator_config: {"split_batches": ...}`',
    "dispatch_batches": '`accelerator_config: {"dispatch_batches": ...}`',
    "tokenizer": "the spec's `tokenizer` section",
}
# Values that depend on the worker's device; see the module docstring.
DEVICE_DEPENDENT = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")
# Fields whose effect `TrainingArguments` works out from the device it runs on (compiling
# turns TF32 on when the GPU has it, which asks CUDA): left out of pass 4 like the above
# and reported as given (`torch_compile` also as the other two imply it).
COMPILE = ("torch_compile", "torch_compile_backend", "torch_compile_mode")
# The backend of a process group: only the ranks of a job of several devices have one
# (worker/ranks.py: torch's launcher sets `WORLD_SIZE`). A single process has none, and
# `TrainingArguments` asks for one when given a backend ("Default process group has not
# been initialized"), so a single process' build leaves it out; it is reported as given.
PROCESS_GROUP = ("ddp_backend",)
# Fields that may name a file to read: allowed only under the server's allowed paths.
PATH_VALUED = ("deepspeed", "fsdp_config", "accelerator_config")


def _at_least(low: float, *, strict: bool = False) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        if value > low if strict else value >= low:
            return None
        return f"must be {'greater than' if strict else 'at least'} {low:g}"

    return check


def _fraction(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _max_steps(value: float) -> str | None:
    return None if value == -1 or value > 0 else "must be positive, or -1 to use num_train_epochs"


def _seed(value: float) -> str | None:
    return None if 0 <= value <= 2**32 - 1 else "must be in [0, 2**32 - 1]"


# Ranges that TrainingArguments itself does not check (a bad value fails in training).
RANGES: dict[str, Callable[[float], str | None]] = {
    "learning_rate": _at_least(0),
    "num_train_epochs": _at_least(0, strict=True),
    "max_steps": _max_steps,
    "per_device_train_batch_size": _at_least(1),
    "per_device_eval_batch_size": _at_least(1),
    "gradient_accumulation_steps": _at_least(1),
    "eval_accumulation_steps": _at_least(1),
    "weight_decay": _at_least(0),
    "adam_beta1": _fraction,
    "adam_beta2": _fraction,
    "adam_epsilon": _at_least(0),
    "max_grad_norm": _at_least(0),
    "label_smoothing_factor": _fraction,
    "warmup_steps": _at_least(0),
    "logging_steps": _at_least(0),
    "eval_steps": _at_least(0, strict=True),
    "save_steps": _at_least(0, strict=True),
    "eval_delay": _at_least(0),
    "save_total_limit": _at_least(1),
    "dataloader_num_workers": _at_least(0),
    "dataloader_prefetch_factor": _at_least(1),
    "torch_empty_cache_steps": _at_least(1),
    "neftune_noise_alpha": _at_least(0, strict=True),
    "ddp_timeout": _at_least(1),
    "seed": _seed,
    "data_seed": _seed,
}


# transformers' lazy module is not safe to import from two threads at once (the warm-up
# thread and a first request): one import, under a lock.
_import_lock = threading.Lock()


def import_lock() -> threading.Lock:
    """The lock to hold while importing from transformers (see `_import_lock`)."""
    return _import_lock


def _training_arguments() -> Any:
    with _import_lock:
        from transformers.training_args import TrainingArguments

        return TrainingArguments


@lru_cache(maxsize=1)
def _deviceless_arguments() -> Any:
    """`TrainingArguments` whose device set-up is a no-op on the CPU, for validation.

    Building the real one sets up its device in `__post_init__` (`_setup_devices`): it
    resets accelerate's process-wide state and creates a `PartialState`, which with
    `ddp_backend` (or launcher variables in the environment) initialises, or asks for,
    a `torch.distributed` process group, and on a GPU machine creates a CUDA context.
    None of that says anything about the spec, and all of it is a side effect on the API
    process. Every other check of `__post_init__` runs as it is."""
    import torch

    base = _training_arguments()

    class DevicelessTrainingArguments(base):  # type: ignore[misc, valid-type]
        @property
        def _setup_devices(self) -> Any:
            self._n_gpu = 0
            self.distributed_state = None
            return torch.device("cpu")

    return DevicelessTrainingArguments


@dataclasses.dataclass(frozen=True)
class Field:
    adapter: TypeAdapter[Any]
    choices: tuple[str, ...]  # the values of an enum-typed field; () when it has none


def _choices(field: dataclasses.Field[Any], hint: Any) -> tuple[str, ...]:
    """The allowed values of a field typed `SomeEnum | str`, or with `choices` metadata."""
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return tuple(str(member.value) for member in arg)
    listed = field.metadata.get("choices")
    return tuple(map(str, listed)) if isinstance(listed, list | tuple) else ()


@lru_cache(maxsize=1)
def fields() -> dict[str, Field]:
    """The installed TrainingArguments' init fields, with a strict validator of each."""
    TrainingArguments = _training_arguments()
    hints = typing.get_type_hints(TrainingArguments)
    return {
        f.name: Field(TypeAdapter(hints[f.name]), _choices(f, hints[f.name]))
        for f in dataclasses.fields(TrainingArguments)
        if f.init
    }


def warm_up() -> None:
    fields()
    _deviceless_arguments()


def is_warm() -> bool:
    """Whether TrainingArguments is imported and its validators built (a first POST /jobs
    would otherwise pay seconds for it)."""
    return fields.cache_info().currsize > 0


def owned_reason(name: str) -> str | None:
    """Why the server owns `name`, or None when a spec may set it."""
    return SERVER_OWNED.get(name) or next(
        (why for prefix, why in SERVER_OWNED_PREFIXES.items() if name.startswith(prefix)), None
    )


def _check_value(name: str, value: Any, field: Field) -> Problem | None:
    loc = ("training_args", name)
    try:
        field.adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        return Problem(loc, str(exc.errors()[0]["msg"]), "type_error")
    if field.choices and isinstance(value, str) and value not in field.choices:
        choices = ", ".join(map(repr, field.choices))
        return Problem(loc, f"must be one of {choices}, not {value!r}", "enum")
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and not math.isfinite(value):
        return Problem(loc, "must be a finite number", "out_of_range")
    check = RANGES.get(name)
    message = check(value) if check is not None and is_number else None
    return None if message is None else Problem(loc, message, "out_of_range")


def check_names_and_types(args: dict[str, Any]) -> list[Problem]:
    """Passes 1 to 3: each problem is located at `("training_args", name)`."""
    problems: list[Problem] = []
    known = fields()
    for name, value in args.items():
        loc = ("training_args", name)
        owned = owned_reason(name)
        if owned is not None:
            problems.append(Problem(loc, f"`{name}` is set by the server: {owned}", "server_owned"))
        elif name in RENAMED:
            problems.append(
                Problem(
                    loc,
                    f"`{name}` is not a TrainingArguments field in transformers 5: "
                    f"use {RENAMED[name]}",
                    "renamed",
                )
            )
        elif name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.append(
                Problem(loc, f"`{name}` is not a field of TrainingArguments{hint}", "unknown_field")
            )
        else:
            problem = _check_value(name, value, known[name])
            if problem is not None:
                problems.append(problem)
    if args.get("fp16") and args.get("bf16"):
        problems.append(Problem(("training_args", "bf16"), "give at most one of fp16 or bf16"))
    if args.get("fp16_full_eval") and args.get("bf16_full_eval"):
        problems.append(
            Problem(
                ("training_args", "bf16_full_eval"),
                "give at most one of fp16_full_eval or bf16_full_eval",
            )
        )
    return problems


def in_process_group() -> bool:
    """Whether this process is one rank of several (torch's launcher set `WORLD_SIZE`)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def job_kwargs(
    args: dict[str, Any],
    *,
    output_dir: str,
    seed: int | None = None,
    report_to: str = "none",
    process_group: bool | None = None,
) -> dict[str, Any]:
    """The keyword arguments of a job's `TrainingArguments`: the spec's `training_args` over
    the server's defaults, the spec's top-level `seed`, and what the server owns. Jobs
    report to no integration (`report_to` is for bench/overhead.py's comparison with one).
    Outside a process group (`process_group`, by default `in_process_group()`) the
    `PROCESS_GROUP` fields are left out."""
    kwargs = {**SERVER_DEFAULTS, **args}
    if not (in_process_group() if process_group is None else process_group):
        for name in PROCESS_GROUP:
            kwargs.pop(name, None)
    if seed is not None:
        kwargs["seed"] = seed
    return {
        **kwargs,
        "output_dir": output_dir,
        "report_to": report_to,
        "push_to_hub": False,
        "disable_tqdm": True,
    }


# The `output_dir` of the arguments built at submit, which the worker replaces with the job's.
VALIDATION_OUTPUT_DIR = "/nonexistent/traindepot-validate/output"


def effective(args: dict[str, Any], *, seed: int | None = None) -> dict[str, Any]:
    """Build `TrainingArguments` the way the worker will (raises what it raises) and return
    it as a dict, less the server's own paths.

    The build never touches `torch.distributed` or a device (`_deviceless_arguments`):
    the API host may have no GPU, or one that an API process must not hold a context on
    (about 500 MiB, seen on an H100), and it runs no job's process group. So the fields
    whose meaning depends on the worker's device (`DEVICE_DEPENDENT`, `COMPILE`) are left
    out of the build and reported as given, as is the backend of a process group
    (`PROCESS_GROUP`)."""
    unbuilt = DEVICE_DEPENDENT + COMPILE + PROCESS_GROUP
    kwargs = {k: v for k, v in args.items() if k not in unbuilt}
    # `TrainingArguments` only stores its paths (it creates no directory): a name that is
    # never created will do. A temporary directory per validation cost a submit 5-8 ms.
    built = _deviceless_arguments()(
        **job_kwargs(kwargs, output_dir=VALIDATION_OUTPUT_DIR, seed=seed, process_group=False)
    )
    out: dict[str, Any] = built.to_dict()
    for name in unbuilt:
        if name in args:
            out[name] = args[name]
    if args.get("torch_compile_backend") is not None or args.get("torch_compile_mode") is not None:
        out["torch_compile"] = True
    out.pop("output_dir", None)
    out.pop("logging_dir", None)
    return out


def check_values(
    args: dict[str, Any], *, seed: int | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """Pass 4. Whatever TrainingArguments raises (ValueError mostly, but deepspeed or FSDP
    settings can raise others) is the user's problem to fix, never a 500."""
    try:
        return effective(args, seed=seed), []
    except Exception as exc:
        message = str(exc).strip() or type(exc).__name__
        # Name the field the message is about: the longest given name it mentions.
        named = sorted((name for name in args if name in message), key=len, reverse=True)
        loc = ("training_args", named[0]) if named else ("training_args",)
        return {}, [Problem(loc, message, "value_error")]
