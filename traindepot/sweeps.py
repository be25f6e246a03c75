"""The sweep contract: what `POST /sweeps` takes (pydantic), the rules its search space must
follow that need no spec validator, and the pure helpers both sides share: setting a searched
value at its spec path, the values a space can produce at its ends (which the API validates
as job specs), and Optuna's distributions, sampler and pruner for a sweep
(docs/architecture.md, "Sweeps").

A parameter is named by its spec path (`training_args.learning_rate`, `adapter.r`): the
same name in the study, in `GET /sweeps/{id}` and in the trial job's spec.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from traindepot.problems import Problem

# Fields a trial cannot vary: they decide where and how the job runs, or name it.
NOT_SEARCHABLE = frozenset(
    {"name", "task", "queue", "priority", "resources", "notify", "tags", "resume_from_checkpoint"}
)
# Bounds on what one submit may ask the validator to check.
MAX_PARAMETERS = 16
MAX_CHOICES = 64
MAX_GRID_POINTS = 64

Scalar = str | int | float | bool | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(default=False, description="Sample on a log scale (low must be > 0).")
    step: float | None = Field(default=None, gt=0, description="Discretize (not with `log`).")
    grid_points: int | None = Field(
        default=None,
        ge=2,
        le=MAX_GRID_POINTS,
        description="For the grid sampler: this many points from low to high (evenly, or "
        "evenly on a log scale with `log`).",
    )


class IntParam(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Strict):
    metric: str = Field(
        default="eval_loss",
        min_length=1,
        description="A key of the trial's evaluations (`eval_loss`, `eval_accuracy`...).",
    )
    direction: Literal["minimize", "maximize"] = "minimize"
    select: Literal["best", "last"] = Field(
        default="best", description="The trial's value: its best evaluation, or its last."
    )


class SweepSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    base: dict[str, JsonValue] = Field(description="The job spec every trial starts from.")
    search_space: dict[str, Param] = Field(
        min_length=1,
        max_length=MAX_PARAMETERS,
        description="Spec path -> distribution.",
    )
    objective: Objective = Field(default_factory=Objective)
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "none"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_trials: int = Field(default=10, ge=1, le=1000)
    max_concurrent_trials: int = Field(default=1, ge=1, le=64)
    time_budget_seconds: float | None = Field(
        default=None, gt=0, description="No trial starts after this long (running ones finish)."
    )


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else "string"


def space_problems(sweep: SweepSpec) -> list[Problem]:
    """The rules of the space itself (the spec validator checks its values afterwards)."""
    problems: list[Problem] = []
    resources = sweep.base.get("resources")
    if isinstance(resources, dict) and resources.get("nodes", 1) not in (1, None):
        # A trial is claimed under its sweep's cap by the normal claim, which takes jobs of
        # one worker only; a gang (db/gangs.py) knows no sweep cap.
        problems.append(
            Problem(
                ("base", "resources", "nodes"),
                "a sweep's trials run on one worker each: `resources.nodes` must be 1",
                "not_searchable",
            )
        )
    for path, param in sweep.search_space.items():
        loc: tuple[str, ...] = ("search_space", path)
        parts = path.split(".")
        if any(not part for part in parts):
            problems.append(Problem(loc, f"`{path}` is not a spec path", "path_invalid"))
            continue
        if parts[0] in NOT_SEARCHABLE:
            problems.append(
                Problem(loc, f"`{parts[0]}` cannot vary between trials", "not_searchable")
            )
            continue
        if isinstance(param, CategoricalParam):
            kinds = {_kind(choice) for choice in param.choices}
            if len(kinds) > 1:
                problems.append(
                    Problem(
                        (*loc, "choices"),
                        f"choices of mixed types ({', '.join(sorted(kinds))}): a field has one",
                        "choices_mixed_types",
                    )
                )
            if len({repr(c) for c in param.choices}) != len(param.choices):
                problems.append(Problem((*loc, "choices"), "choices repeat", "choices_repeat"))
            continue
        if param.low > param.high:
            problems.append(Problem((*loc, "low"), "low is above high", "bounds_invalid"))
        if param.log and param.low <= 0:
            problems.append(
                Problem(
                    (*loc, "low"),
                    f"a log distribution needs low > 0 (got {param.low})",
                    "log_low_not_positive",
                )
            )
        if isinstance(param, FloatParam):
            if param.log and param.step is not None:
                problems.append(Problem((*loc, "step"), "step with log", "step_with_log"))
            if sweep.sampler == "grid" and param.grid_points is None and param.step is None:
                problems.append(
                    Problem(
                        (*loc, "grid_points"),
                        "the grid sampler needs `grid_points` (or `step`) for a float",
                        "grid_points_missing",
                    )
                )
        elif param.log and param.step != 1:
            problems.append(Problem((*loc, "step"), "step with log", "step_with_log"))
    return problems


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `spec` with `value` at `path` (sections created as needed). A part of the
    path that is not a section raises ValueError."""
    out = copy.deepcopy(spec)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"`{part}` of `{path}` is not a section of the spec")
        node = child
    node[parts[-1]] = value
    return out


def with_params(spec: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    for path, value in params.items():
        spec = set_path(spec, path, value)
    return spec


def _float_grid(param: FloatParam) -> list[float]:
    if param.step is not None:
        count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
        return [param.low + i * param.step for i in range(min(count, MAX_GRID_POINTS))]
    n = param.grid_points or 2
    if param.log:
        lo, hi = math.log(param.low), math.log(param.high)
        return [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
    return [param.low + (param.high - param.low) * i / (n - 1) for i in range(n)]


def grid_values(param: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        return list(range(param.low, param.high + 1, param.step))[:MAX_GRID_POINTS]
    return _float_grid(param)


def grid_size(sweep: SweepSpec) -> int:
    size = 1
    for param in sweep.search_space.values():
        size *= len(grid_values(param))
    return size


def trial_budget(sweep: SweepSpec) -> int:
    """How many trials the sweep runs at most: `max_trials`, or its grid's size if smaller."""
    return min(sweep.max_trials, grid_size(sweep)) if sweep.sampler == "grid" else sweep.max_trials


def end_values(param: FloatParam | IntParam | CategoricalParam) -> list[Any]:
    """The values to validate a parameter at: both ends of a range (the last one a
    stepped range reaches), every choice of a categorical."""
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    if isinstance(param, IntParam):
        high = param.low + (param.high - param.low) // param.step * param.step
        return [param.low, high] if high != param.low else [param.low]
    if param.step is not None:
        return [_float_grid(param)[0], _float_grid(param)[-1]]
    return [param.low, param.high] if param.high != param.low else [param.low]


def specs_to_check(sweep: SweepSpec) -> list[tuple[str, dict[str, Any]]]:
    """(path, spec) for every value that `end_values` gives each parameter, the other
    parameters at their first value, and the spec with every parameter at its last value:
    each is a job spec a trial could run, validated as `POST /jobs` would."""
    first = {path: end_values(p)[0] for path, p in sweep.search_space.items()}
    last = {path: end_values(p)[-1] for path, p in sweep.search_space.items()}
    out: list[tuple[str, dict[str, Any]]] = []
    for path, param in sweep.search_space.items():
        for value in end_values(param):
            out.append((path, with_params(sweep.base, {**first, path: value})))
    if len(sweep.search_space) > 1:
        out.append(("", with_params(sweep.base, last)))
    return out


def trial_spec(
    sweep: SweepSpec, sweep_id: str, number: int, params: dict[str, Any]
) -> dict[str, Any]:
    """The job spec of trial `number`: the base with its parameters, named after the sweep
    and tagged with it (the job list filters by tag)."""
    spec = with_params(sweep.base, params)
    spec["name"] = f"{sweep.name}-trial-{number}"[:200]
    spec.pop("notify", None)  # the sweep's webhooks are the tenant's (`sweep.*`, `job.*`)
    tags = dict(spec.get("tags") or {})
    tags.update({"sweep": sweep_id, "trial": str(number)})
    spec["tags"] = tags
    return spec


def distributions(sweep: SweepSpec) -> dict[str, Any]:
    """Optuna's distribution for each parameter (optuna is imported here only)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for path, param in sweep.search_space.items():
        if isinstance(param, CategoricalParam):
            out[path] = CategoricalDistribution(param.choices)
        elif isinstance(param, IntParam):
            out[path] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[path] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return out


def sampler(sweep: SweepSpec, trials_so_far: int) -> Any:
    """A sampler for the next ask. The study is reloaded for each ask, so the seed moves on
    with the number of trials (a fixed seed would repeat the same random draws)."""
    import optuna

    if sweep.sampler == "grid":
        # Its seed shuffles the grid: the same one for every ask, so trial N is grid point N.
        grid = {path: grid_values(p) for path, p in sweep.search_space.items()}
        return optuna.samplers.GridSampler(grid, seed=sweep.seed)
    seed = sweep.seed + trials_so_far
    if sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Trials run side by side: the running ones count as already seen (constant liar).
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def telling_sampler() -> Any:
    """The sampler a study is loaded with to be told a result: one whose `after_trial` does
    nothing (GridSampler's calls `Study.stop`, which raises outside `optimize`)."""
    import optuna

    return optuna.samplers.RandomSampler()


def pruner(sweep: SweepSpec) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if sweep.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()
