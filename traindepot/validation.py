"""Checks on a spec that need more than its shape: the server's settings (allowed paths,
inline bounds) and the installed `TrainingArguments`. Run before any row is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traindepot import training_args
from traindepot.problems import Problem, SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec


def is_local_path(name_or_path: str) -> bool:
    """A local path starts with `/`, `./`, `../` or `~`; anything else is a hub id."""
    return name_or_path.startswith(("/", "./", "../", "~"))


def check_path(raw: str, loc: tuple[str | int, ...], settings: Settings) -> list[Problem]:
    path = Path(raw).expanduser().resolve()
    if not any(path.is_relative_to(root) for root in settings.allowed_paths):
        roots = ", ".join(map(str, settings.allowed_paths)) or "none configured"
        return [
            Problem(
                loc,
                f"{raw!r} is outside the allowed paths ({roots}); "
                "set TRAINDEPOT_ALLOWED_PATHS on the server",
                "path_not_allowed",
            )
        ]
    if not path.exists():
        return [Problem(loc, f"{raw!r} does not exist", "path_missing")]
    return []


def check_spec(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    """Raise SpecInvalid naming every problem; return the effective TrainingArguments."""
    problems: list[Problem] = []
    if spec.model.name_or_path and is_local_path(spec.model.name_or_path):
        problems += check_path(spec.model.name_or_path, ("model", "name_or_path"), settings)
    if (
        spec.tokenizer
        and spec.tokenizer.name_or_path
        and is_local_path(spec.tokenizer.name_or_path)
    ):
        problems += check_path(spec.tokenizer.name_or_path, ("tokenizer", "name_or_path"), settings)
    files = spec.dataset.files
    if files is not None:
        problems += check_path(files.train, ("dataset", "files", "train"), settings)
        if files.validation is not None:
            problems += check_path(files.validation, ("dataset", "files", "validation"), settings)
    rows = spec.dataset.rows
    if rows is not None:
        if len(rows) > settings.max_inline_rows:
            problems.append(
                Problem(
                    ("dataset", "rows"),
                    f"{len(rows)} inline rows; at most "
                    f"{settings.max_inline_rows} (use `files` or `hub`)",
                    "too_many_rows",
                )
            )
        size = len(json.dumps(rows))
        if size > settings.max_inline_bytes:
            problems.append(
                Problem(
                    ("dataset", "rows"),
                    f"inline rows take {size} bytes; at most "
                    f"{settings.max_inline_bytes} (use `files` or `hub`)",
                    "too_large",
                )
            )
    problems += training_args.check_names_and_types(dict(spec.training_args))
    if problems:
        raise SpecInvalid(problems)
    effective, value_problems = training_args.check_values(dict(spec.training_args), seed=spec.seed)
    if value_problems:
        raise SpecInvalid(value_problems)
    return effective
