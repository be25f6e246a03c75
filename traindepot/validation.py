"""Checks on a spec that need more than its shape: how its sections fit together, the
server's settings (allowed paths, inline bounds), the installed `TrainingArguments`, the jobs
that exist and the devices of the workers that serve its queue. All of them run before any
row is written; each problem names its field (`loc`, as pydantic reports it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traindepot import limits, training_args, webhook_urls
from traindepot.adapters import adapter_problems
from traindepot.device_checks import WorkerDevices, check_devices
from traindepot.exported_models import NoExportedModel, exported_model_dir
from traindepot.localpaths import model_dir_problems
from traindepot.problems import Problem, SpecInvalid
from traindepot.recipes import recipe_for
from traindepot.settings import Settings
from traindepot.spec import JobSpec, ModelSpec, is_local_path
from traindepot.statuses import JobStatus

__all__ = [
    "check_spec",
    "consistency_problems",
    "source_jobs",
]


def check_path(raw: str, loc: tuple[str | int, ...], settings: Settings) -> list[Problem]:
    if not is_local_path(raw):
        return [Problem(loc, f"{raw!r} is not an absolute path", "path_not_absolute")]
    # resolve() follows symlinks: a link under an allowed root that points outside is refused.
    path = Path(raw).resolve()
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


def consistency_problems(spec: JobSpec) -> list[Problem]:
    """Rules across sections of the spec (pydantic checked each section on its own), the
    fields of other tasks' specs, and the recipe's own checks."""
    problems: list[Problem] = []
    ds, args = spec.dataset, spec.training_args
    takes_text = recipe_for(spec).takes_text
    if takes_text and spec.tokenizer is None and spec.model.from_config is not None:
        problems.append(
            Problem(
                ("tokenizer",),
                "a model `from_config` has no tokenizer of its own: set `tokenizer`"
                ' (e.g. {"builtin": "byte-level"})',
                "missing",
            )
        )
    for loc, tasks in spec.other_tasks_fields:
        owners = ", ".join(f"`{task}`" for task in tasks)
        problems.append(
            Problem(
                loc,
                f"applies to task{'s' if len(tasks) > 1 else ''} {owners} only"
                f" (this job's task is `{spec.task}`)",
                "not_for_task",
            )
        )
    if ds.eval_split is not None and ds.eval_fraction is not None:
        problems.append(
            Problem(
                ("dataset", "eval_fraction"), "give at most one of `eval_split` or `eval_fraction`"
            )
        )
    if ds.eval_split is not None and ds.hub is None:
        problems.append(
            Problem(
                ("dataset", "eval_split"),
                "names a split of a `hub` dataset; with `files` give `files.validation`,"
                " with `rows` use `eval_fraction`",
            )
        )
    if ds.eval_fraction is not None and ds.files is not None and ds.files.validation is not None:
        problems.append(
            Problem(
                ("dataset", "eval_fraction"),
                "give at most one of `files.validation` or `eval_fraction`",
            )
        )
    args_seed = args.get("seed")
    if spec.seed is not None and args_seed is not None and args_seed != spec.seed:
        problems.append(
            Problem(
                ("seed",),
                f"`seed` ({spec.seed}) and `training_args.seed` ({args_seed}) disagree: give one",
            )
        )
    problems += _evaluation_problems(spec)
    problems += adapter_problems(spec)
    problems += recipe_for(spec).check(spec)
    return problems


def _evaluation_problems(spec: JobSpec) -> list[Problem]:
    """Evaluation settings need evaluation data, and early stopping needs evaluation."""
    args = spec.training_args
    eval_strategy = args.get("eval_strategy", "no")
    evaluates = eval_strategy != "no"
    problems: list[Problem] = []
    if evaluates and not spec.dataset.has_eval():
        problems.append(
            Problem(
                ("training_args", "eval_strategy"),
                f"is {eval_strategy!r} but the dataset has no evaluation data: set"
                " `dataset.eval_fraction`, `dataset.eval_split` (hub) or"
                " `dataset.files.validation`",
                "no_eval_data",
            )
        )
    if args.get("load_best_model_at_end") and not evaluates:
        problems.append(
            Problem(
                ("training_args", "load_best_model_at_end"),
                "needs evaluation: set `eval_strategy` (and `save_strategy` to match) and give"
                " evaluation data",
                "needs_evaluation",
            )
        )
    if spec.early_stopping is not None:
        if not evaluates:
            problems.append(
                Problem(
                    ("early_stopping",),
                    "needs evaluation: set `training_args.eval_strategy` and give evaluation data",
                    "needs_evaluation",
                )
            )
        if args.get("metric_for_best_model") is None and not args.get("load_best_model_at_end"):
            problems.append(
                Problem(
                    ("early_stopping",),
                    "needs a metric to watch: set `training_args.metric_for_best_model`"
                    ' (e.g. "eval_loss")',
                    "needs_metric",
                )
            )
    return problems


def _bounded_rows(rows: list[Any], settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    if len(rows) > settings.max_inline_rows:
        problems.append(
            Problem(
                ("dataset", "rows"),
                f"{len(rows)} inline rows; at most {settings.max_inline_rows}"
                " (use `files` or `hub`)",
                "too_many_rows",
            )
        )
    size = len(json.dumps(rows))
    if size > settings.max_inline_bytes:
        problems.append(
            Problem(
                ("dataset", "rows"),
                f"inline rows take {size} bytes; at most {settings.max_inline_bytes}"
                " (use `files` or `hub`)",
                "too_large",
            )
        )
    return problems


def _model_dir(
    raw: str, loc: tuple[str | int, ...], settings: Settings, *, weights: bool
) -> list[Problem]:
    """An allowed local model or tokenizer directory, checked file by file."""
    problems = check_path(raw, loc, settings)
    if problems:
        return problems
    found = model_dir_problems(
        Path(raw).resolve(), allow_pickle=settings.allow_pickle_weights or not weights
    )
    return [Problem(loc, message, "model_dir_refused") for message in found]


def _paths(spec: JobSpec, settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    if spec.model.name_or_path and is_local_path(spec.model.name_or_path):
        problems += _model_dir(
            spec.model.name_or_path, ("model", "name_or_path"), settings, weights=True
        )
    for loc, other in recipe_for(spec).other_models(spec):
        if other.name_or_path and is_local_path(other.name_or_path):
            where = (*loc, "name_or_path")
            problems += _model_dir(other.name_or_path, where, settings, weights=True)
    tok = spec.tokenizer
    if tok is not None and tok.name_or_path and is_local_path(tok.name_or_path):
        problems += _model_dir(
            tok.name_or_path, ("tokenizer", "name_or_path"), settings, weights=False
        )
    files = spec.dataset.files
    if files is not None:
        problems += check_path(files.train, ("dataset", "files", "train"), settings)
        if files.validation is not None:
            problems += check_path(files.validation, ("dataset", "files", "validation"), settings)
    for name in training_args.PATH_VALUED:
        value = spec.training_args.get(name)
        if isinstance(value, str):
            problems += check_path(value, ("training_args", name), settings)
    return problems


def _webhooks(spec: JobSpec, settings: Settings) -> list[Problem]:
    """Each `notify.webhooks` URL must resolve to addresses that may receive webhooks."""
    problems = []
    for i, target in enumerate(spec.notify.webhooks if spec.notify else []):
        problem = webhook_url_problem(target.url, settings)
        if problem is not None:
            problems.append(Problem(("notify", "webhooks", i, "url"), problem, "webhook_url"))
    return problems


def webhook_url_problem(url: str, settings: Settings) -> str | None:
    """Why `url` may not receive webhooks, or None (resolves the host: call off the loop)."""
    try:
        webhook_urls.resolve(url, settings.webhook_allowed_networks)
    except webhook_urls.UnsafeUrl as exc:
        return str(exc)
    return None


def source_jobs(spec: JobSpec) -> list[tuple[tuple[str | int, ...], uuid.UUID]]:
    """The jobs whose exported models the spec starts from (`model.from_job`, and a
    recipe's other models: a reference model), by `loc`."""
    models: list[tuple[tuple[str | int, ...], ModelSpec]] = [(("model",), spec.model)]
    models += [(tuple(loc), model) for loc, model in recipe_for(spec).other_models(spec)]
    return [((*loc, "from_job"), m.from_job) for loc, m in models if m.from_job is not None]


def _source_job_problems(
    spec: JobSpec, settings: Settings, job_status: Callable[[uuid.UUID], str | None] | None
) -> list[Problem]:
    """Each `from_job` names a job (of the caller's tenant: `job_status` looks it up in
    it; skipped when None) that succeeded and exported a model to start from."""
    problems: list[Problem] = []
    for loc, job_id in source_jobs(spec):
        if job_status is not None:
            status = job_status(job_id)
            if status is None:
                problems.append(Problem(loc, f"there is no job {job_id}", "job_not_found"))
                continue
            if status != JobStatus.SUCCEEDED:
                problems.append(
                    Problem(
                        loc,
                        f"job {job_id} is `{status}`: only a job that succeeded has a model"
                        " to start from",
                        "job_not_succeeded",
                    )
                )
                continue
        try:
            exported_model_dir(job_id, settings)
        except NoExportedModel as exc:
            problems.append(Problem(loc, str(exc), "no_exported_model"))
    return problems


def check_spec(
    spec: JobSpec,
    settings: Settings,
    *,
    devices: Sequence[WorkerDevices] | None = None,
    job_exists: Callable[[uuid.UUID], bool] | None = None,
    job_status: Callable[[uuid.UUID], str | None] | None = None,
) -> dict[str, Any]:
    """Raise SpecInvalid naming every problem; return the effective TrainingArguments.

    `devices`: the live workers of the spec's queue; `job_exists`: looks up the job named by
    `resume_from_checkpoint`; `job_status`: the status of a job a `from_job` names, None
    when the caller has no such job (each skipped when None). The server's defaults (the
    time limit) are filled into `spec`; its limits are checked once the spec is otherwise
    valid (counting the model's parameters is the slow part)."""
    limits.apply_defaults(spec, settings)
    problems = consistency_problems(spec) + _paths(spec, settings) + _webhooks(spec, settings)
    problems += _source_job_problems(spec, settings, job_status)
    if spec.dataset.rows is not None:
        problems += _bounded_rows(spec.dataset.rows, settings)
    resume = spec.resume_from_checkpoint
    if isinstance(resume, uuid.UUID) and job_exists is not None and not job_exists(resume):
        problems.append(
            Problem(
                ("resume_from_checkpoint",),
                f"there is no job {resume} to continue from",
                "job_not_found",
            )
        )
    args = dict(spec.training_args)
    problems += training_args.check_names_and_types(args)
    problems += limits.check_limits(spec, settings, count_model=not problems)
    if problems:
        raise SpecInvalid(problems)
    effective, value_problems = training_args.check_values(args, seed=spec.seed)
    value_problems += check_devices(spec, devices, queue=spec.queue)
    if value_problems:
        raise SpecInvalid(value_problems)
    return effective
