"""`training_args` checked against the installed `TrainingArguments`, at POST time.

transformers is imported lazily (it pulls torch): the first validation pays ~3 s once, and
the API warms it up in the background at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import tempfile
import threading
import typing
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from traindepot.problems import Problem

# Owned by the server: it chooses where a job writes and where it reports.
SERVER_OWNED: dict[str, str] = {
    "output_dir": "the server gives each job its own output directory",
    "logging_dir": "the server keeps each job's logs in its own directory",
    "report_to": "traindepot records every log itself; integrations are not run on workers",
    "push_to_hub": "workers do not push to the Hub; download the checkpoint from the job",
    "resume_from_checkpoint": "use the spec's top-level `resume_from_checkpoint`",
    "overwrite_output_dir": "removed in transformers 5, and each job has its own output directory",
}
SERVER_OWNED_PREFIXES: dict[str, str] = {
    "hub_": "workers do not push to the Hub",
}
# Names removed or renamed in transformers 5, with what to write instead.
RENAMED: dict[str, str] = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "use_mps_device": "use_cpu (MPS is picked automatically)",
    "warmup_ratio": "warmup_steps (a value below 1 is read as a fraction of the total steps)",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "fp16_backend": "half_precision_backend",
    "tokenizer": "the spec's `tokenizer` section",
}
# Values that depend on the worker's device; the API host may have none, so they are
# checked with `use_cpu` set (the worker checks them again on its own device).
_DEVICE_DEPENDENT = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


# transformers' lazy module is not safe to import from two threads at once (the warm-up
# thread and a first request): one import, under a lock.
_import_lock = threading.Lock()


def _training_arguments() -> Any:
    with _import_lock:
        from transformers.training_args import TrainingArguments

        return TrainingArguments


@lru_cache(maxsize=1)
def _fields() -> dict[str, TypeAdapter[Any]]:
    TrainingArguments = _training_arguments()
    hints = typing.get_type_hints(TrainingArguments)
    return {
        f.name: TypeAdapter(hints[f.name]) for f in dataclasses.fields(TrainingArguments) if f.init
    }


def warm_up() -> None:
    _fields()


def check_names_and_types(args: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    fields = _fields()
    for name, value in args.items():
        loc = ("training_args", name)
        owned = SERVER_OWNED.get(name) or next(
            (why for prefix, why in SERVER_OWNED_PREFIXES.items() if name.startswith(prefix)),
            None,
        )
        if owned is not None:
            problems.append(Problem(loc, f"`{name}` is set by the server: {owned}", "server_owned"))
        elif name in RENAMED:
            problems.append(
                Problem(
                    loc,
                    f"`{name}` is not a TrainingArguments field in this version: "
                    f"use {RENAMED[name]}",
                    "renamed",
                )
            )
        elif name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            problems.append(
                Problem(loc, f"`{name}` is not a field of TrainingArguments{hint}", "unknown_field")
            )
        else:
            try:
                fields[name].validate_python(value, strict=True)
            except ValidationError as exc:
                problems.append(Problem(loc, exc.errors()[0]["msg"], "type_error"))
    return problems


def effective(args: dict[str, Any], *, seed: int | None = None) -> dict[str, Any]:
    """Build `TrainingArguments` the way the worker will; raises ValueError as it does."""
    TrainingArguments = _training_arguments()

    kwargs = dict(args)
    if seed is not None:
        kwargs["seed"] = seed
    if any(kwargs.get(flag) for flag in _DEVICE_DEPENDENT) and "use_cpu" not in kwargs:
        kwargs["use_cpu"] = True
    with tempfile.TemporaryDirectory(prefix="traindepot-validate-") as tmp:
        built = TrainingArguments(output_dir=f"{tmp}/output", report_to="none", **kwargs)
        out: dict[str, Any] = built.to_dict()
    out.pop("output_dir", None)
    out.pop("logging_dir", None)
    for flag in ("use_cpu",):
        if flag not in args:
            out.pop(flag, None)
    return out


def check_values(
    args: dict[str, Any], *, seed: int | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    try:
        return effective(args, seed=seed), []
    except (ValueError, TypeError) as exc:
        message = str(exc).strip()
        named = [name for name in args if name in message]
        loc = ("training_args", named[0]) if named else ("training_args",)
        return {}, [Problem(loc, message, "value_error")]
