"""The server's limits on what one spec may ask for (issue 11), checked before any row is
written. Each problem names its field and the limit, and the setting that sets it.

The model's parameters are counted on the meta device (`traindepot.parameters`);
`check_spec` runs in a worker thread of the API, never on its event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from traindepot.parameters import count_parameters, parameter_count
from traindepot.problems import Problem
from traindepot.queues import check_queue_name
from traindepot.settings import Settings
from traindepot.spec import JobSpec, is_local_path

__all__ = ["apply_defaults", "check_limits"]

# TrainingArguments' defaults for the fields the limits read.
_DEFAULT_BATCH = 8
_DEFAULT_EPOCHS = 3.0


def _env(name: str) -> str:
    return f"TRAINDEPOT_{name.upper()}"


def _fmt(value: float) -> str:
    """`10,000,000` and `0.5`, never `1e+07`."""
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


def _over(loc: tuple[str | int, ...], what: str, limit: float, setting: str) -> Problem:
    return Problem(
        loc,
        f"{what}; the server's limit is {_fmt(limit)} (set by {_env(setting)})",
        "over_limit",
    )


def apply_defaults(spec: JobSpec, settings: Settings) -> None:
    """Fill in what the server chooses when the spec does not: the time limit."""
    if spec.limits.max_runtime_seconds is None:
        spec.limits.max_runtime_seconds = min(
            settings.default_max_runtime_seconds, settings.max_runtime_seconds
        )


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _training_problems(spec: JobSpec, settings: Settings) -> list[Problem]:
    args = spec.training_args
    problems: list[Problem] = []
    workers = _number(args.get("dataloader_num_workers"), 0)
    if workers > settings.max_dataloader_workers:
        problems.append(
            _over(
                ("training_args", "dataloader_num_workers"),
                f"is {_fmt(workers)}",
                settings.max_dataloader_workers,
                "max_dataloader_workers",
            )
        )
    batch = _number(args.get("per_device_train_batch_size"), _DEFAULT_BATCH) * _number(
        args.get("gradient_accumulation_steps"), 1
    )
    max_steps = _number(args.get("max_steps"), -1)
    if max_steps > 0:
        samples = max_steps * batch
        if samples > settings.max_train_samples:
            problems.append(
                _over(
                    ("training_args", "max_steps"),
                    f"max_steps x per_device_train_batch_size x gradient_accumulation_steps"
                    f" is {_fmt(samples)} training examples",
                    settings.max_train_samples,
                    "max_train_samples",
                )
            )
        return problems
    epochs = _number(args.get("num_train_epochs"), _DEFAULT_EPOCHS)
    if epochs > settings.max_train_epochs:
        problems.append(
            _over(
                ("training_args", "num_train_epochs"),
                f"is {_fmt(epochs)} epochs",
                settings.max_train_epochs,
                "max_train_epochs",
            )
        )
    rows = len(spec.dataset.rows) if spec.dataset.rows is not None else None
    if spec.dataset.max_samples is not None:
        rows = min(rows, spec.dataset.max_samples) if rows is not None else spec.dataset.max_samples
    if rows is not None and epochs * rows > settings.max_train_samples:
        problems.append(
            _over(
                ("training_args", "num_train_epochs"),
                f"num_train_epochs x rows is {_fmt(epochs * rows)} training examples",
                settings.max_train_samples,
                "max_train_samples",
            )
        )
    if batch > settings.max_train_samples:
        problems.append(
            _over(
                ("training_args", "per_device_train_batch_size"),
                f"a batch of {_fmt(batch)} examples",
                settings.max_train_samples,
                "max_train_samples",
            )
        )
    return problems


def _file_problems(spec: JobSpec, settings: Settings) -> list[Problem]:
    files = spec.dataset.files
    if files is None:
        return []
    problems: list[Problem] = []
    for name, raw in (("train", files.train), ("validation", files.validation)):
        if raw is None or not is_local_path(raw):
            continue
        try:
            size = Path(raw).resolve().stat().st_size
        except OSError:
            continue  # a missing file is reported by the path checks
        if size > settings.max_dataset_file_bytes:
            problems.append(
                _over(
                    ("dataset", "files", name),
                    f"the file has {size:,} bytes",
                    settings.max_dataset_file_bytes,
                    "max_dataset_file_bytes",
                )
            )
    return problems


def _model_problems(spec: JobSpec, settings: Settings) -> list[Problem]:
    model = spec.model
    problems: list[Problem] = []
    if model.trust_remote_code and not settings.allow_trust_remote_code:
        problems.append(
            Problem(
                ("model", "trust_remote_code"),
                "this server does not run code from model repositories"
                f" (the operator may allow it with {_env('allow_trust_remote_code')}=true)",
                "not_allowed",
            )
        )
        return problems
    loc: tuple[str | int, ...] = ("model", model.source_loc())
    counted = parameter_count(spec)
    if counted is None:
        return problems
    if counted.total > settings.max_model_parameters:
        problems.append(
            _over(
                loc,
                f"the model has {counted.total:,} parameters",
                settings.max_model_parameters,
                "max_model_parameters",
            )
        )
        return problems
    # The recipe's other models (a reference model...) are held beside it: counted with it.
    from traindepot.adapters import target_problems
    from traindepot.recipes import recipe_for

    total = counted.total
    for other_loc, other in recipe_for(spec).other_models(spec):
        other_count = count_parameters(spec, other)
        if other_count is None:
            continue
        total += other_count
        if total > settings.max_model_parameters:
            problems.append(
                _over(
                    other_loc,
                    f"with it the job holds {total:,} parameters (the model's"
                    f" {counted.total:,} and this one's {other_count:,})",
                    settings.max_model_parameters,
                    "max_model_parameters",
                )
            )
    return problems + target_problems(
        spec, counted.unmatched, counted.linear_layers, counted.adapter_error
    )


def _nul_problems(value: Any, loc: tuple[str | int, ...]) -> list[Problem]:
    """NUL characters: no PostgreSQL text or JSONB value can hold one."""
    if isinstance(value, str):
        if "\x00" not in value:
            return []
        return [Problem(loc, "contains a NUL character (\\u0000)", "nul_character")]
    if isinstance(value, dict):
        out: list[Problem] = []
        for key, item in value.items():
            if "\x00" in str(key):
                out.append(
                    Problem((*loc, str(key)), "the key contains a NUL character", "nul_character")
                )
            out += _nul_problems(item, (*loc, str(key)))
        return out
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_problems(item, (*loc, i))]
    return []


def check_limits(spec: JobSpec, settings: Settings, *, count_model: bool = True) -> list[Problem]:
    """Every limit the spec exceeds. The model is counted last, only when nothing else is
    wrong (and `count_model`): it is the slow check."""
    problems = _nul_problems(spec.model_dump(mode="json"), ())
    queue_problem = check_queue_name(spec.queue)
    if queue_problem is not None:
        problems.append(Problem(("queue",), queue_problem, "queue_reserved"))
    elif spec.queue not in settings.queues:
        problems.append(
            Problem(
                ("queue",),
                f"{spec.queue!r} is not a queue of this server; its queues are"
                f" {', '.join(map(repr, settings.queues))} (set by {_env('queues')})",
                "queue_unknown",
            )
        )
    from traindepot.recipes import recipe_for

    lengths = {
        ("preprocessing", "max_length"): spec.preprocessing.max_length,
        **recipe_for(spec).sequence_lengths(spec),
    }
    for length_loc, length in lengths.items():
        if length > settings.max_sequence_length:
            problems.append(
                _over(
                    length_loc,
                    f"is {length:,} tokens",
                    settings.max_sequence_length,
                    "max_sequence_length",
                )
            )
    if spec.adapter is not None and spec.adapter.r > settings.max_adapter_rank:
        problems.append(
            _over(
                ("adapter", "r"),
                f"is {spec.adapter.r:,}",
                settings.max_adapter_rank,
                "max_adapter_rank",
            )
        )
    runtime = spec.limits.max_runtime_seconds
    if runtime is not None and runtime > settings.max_runtime_seconds:
        problems.append(
            _over(
                ("limits", "max_runtime_seconds"),
                f"is {_fmt(runtime)} seconds",
                settings.max_runtime_seconds,
                "max_runtime_seconds",
            )
        )
    problems += _training_problems(spec, settings)
    problems += _file_problems(spec, settings)
    if count_model and not problems:
        problems += _model_problems(spec, settings)
    return problems
