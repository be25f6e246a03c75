"""The recipes this process knows: the built-in ones and those installed packages register
under the `traindepot.recipes` entry-point group (an entry point names a `Recipe` subclass).

The API and the worker (and the warm-start template) read the same installed entry points,
so a recipe installed into the environment is known to all of them. Loading imports the
recipe modules only, which import no torch.
"""

from __future__ import annotations

import importlib
import logging
import threading
from importlib.metadata import entry_points
from typing import Any

from pydantic import GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import InitErrorDetails, PydanticCustomError

from traindepot.recipes.base import Recipe
from traindepot.spec import DEFAULT_TASK, JobSpec

__all__ = [
    "ENTRY_POINT_GROUP",
    "all_recipes",
    "get",
    "recipe_for",
    "set_aside_other_tasks_fields",
    "union_json_schema",
    "validate_spec",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "traindepot.recipes"

# The built-in recipes, one module each.
_BUILT_IN = (
    "traindepot.recipes.causal_lm:CausalLMRecipe",
    "traindepot.recipes.masked_lm:MaskedLMRecipe",
    "traindepot.recipes.sequence_classification:SequenceClassificationRecipe",
    "traindepot.recipes.token_classification:TokenClassificationRecipe",
    "traindepot.recipes.question_answering:QuestionAnsweringRecipe",
    "traindepot.recipes.seq2seq:Seq2SeqRecipe",
    "traindepot.recipes.image_classification:ImageClassificationRecipe",
    "traindepot.recipes.sft:SFTRecipe",
    "traindepot.recipes.dpo:DPORecipe",
)

_recipes: dict[str, Recipe] | None = None
_lock = threading.Lock()


def _load(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def _instance(loaded: Any, source: str) -> Recipe | None:
    recipe = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(recipe, Recipe):
        log.error("%s is not a traindepot Recipe: ignored", source)
        return None
    model = getattr(recipe, "spec_model", None)
    if not isinstance(getattr(recipe, "task", None), str) or not (
        isinstance(model, type) and issubclass(model, JobSpec)
    ):
        log.error("recipe %s needs a `task` and a `spec_model` (a JobSpec subclass)", source)
        return None
    task = model.model_fields.get("task")
    if task is None or (recipe.task != DEFAULT_TASK and not task.is_required()):
        # Only the default task may be left out of a spec; in the JSON Schema every other
        # recipe's model requires its `task`, which keeps the union's branches apart.
        log.error(
            'recipe %s: its spec_model needs `task: Literal["%s"]`, with no default',
            source,
            recipe.task,
        )
        return None
    return recipe


def _discover() -> dict[str, Recipe]:
    found: dict[str, Recipe] = {}
    for reference in _BUILT_IN:
        recipe = _instance(_load(reference), reference)
        assert recipe is not None
        found[recipe.task] = recipe
    for point in entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {point.name!r} ({point.value})"
        try:
            recipe = _instance(point.load(), source)
        except Exception:
            # One broken plugin must not take the service down; its task stays unknown.
            log.exception("recipe %s could not be loaded: ignored", source)
            continue
        if recipe is None:
            continue
        if recipe.task in found:
            log.error("recipe %s: task %r is taken already: ignored", source, recipe.task)
            continue
        found[recipe.task] = recipe
        log.info("recipe %r from %s", recipe.task, source)
    return found


def all_recipes() -> dict[str, Recipe]:
    """Every known recipe by task, the built-in ones first (loaded once per process)."""
    global _recipes
    if _recipes is None:
        with _lock:
            if _recipes is None:
                _recipes = _discover()
    return _recipes


def get(task: str) -> Recipe | None:
    return all_recipes().get(task)


def recipe_for(spec: JobSpec) -> Recipe:
    """The recipe of a validated spec."""
    recipe = get(spec.task)
    if recipe is None:  # a spec is validated by its recipe's model: it cannot be unknown
        raise LookupError(f"no recipe for task {spec.task!r}")
    return recipe


def validate_spec(data: Any) -> JobSpec:
    """`data` validated by the model of the recipe its `task` names (see `JobSpec`)."""
    if isinstance(data, JobSpec):
        return data
    task = data.get("task", DEFAULT_TASK) if isinstance(data, dict) else DEFAULT_TASK
    recipe = get(task) if isinstance(task, str) else None
    if recipe is None:
        known = ", ".join(f"'{name}'" for name in all_recipes())
        error = PydanticCustomError(
            "task_unknown",
            "unknown task {task}: this server's tasks are {known}",
            {"task": repr(task), "known": known},
        )
        details: list[InitErrorDetails] = [{"type": error, "loc": ("task",), "input": task}]
        raise ValidationError.from_exception_data("JobSpec", details)
    return recipe.spec_model.model_validate(data)


def _section_model(model: type[JobSpec], name: str) -> type[Any] | None:
    """The pydantic model of a spec's section (`dataset`, ...), or None if not a model."""
    info = model.model_fields.get(name)
    annotation = info.annotation if info is not None else None
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    return None


def _owners(loc: tuple[str, ...], but: type[JobSpec]) -> list[str]:
    """The tasks whose spec model has the field at `loc` (one or two levels deep)."""
    owners = []
    for task, recipe in all_recipes().items():
        model = recipe.spec_model
        if model is but:
            continue
        if len(loc) == 1:
            has = loc[0] in model.model_fields
        else:
            section = _section_model(model, loc[0])
            has = section is not None and loc[1] in section.model_fields
        if has:
            owners.append(task)
    return owners


def set_aside_other_tasks_fields(
    model: type[JobSpec], data: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], list[str]]]]:
    """`data` without the fields that `model` lacks but another recipe's model has, and
    those fields with their tasks. A field set to null is dropped: null meant "not given"
    (specs stored before the recipes carried other tasks' fields as nulls). A field no
    recipe knows stays, for pydantic to refuse."""
    kept: dict[str, Any] = {}
    aside: list[tuple[tuple[str, ...], list[str]]] = []
    for key, value in data.items():
        if key not in model.model_fields:
            owners = _owners((key,), model)
            if owners:
                if value is not None:
                    aside.append(((key,), owners))
                continue
            kept[key] = value
            continue
        section = _section_model(model, key)
        if section is None or not isinstance(value, dict):
            kept[key] = value
            continue
        inner: dict[str, Any] = {}
        for name, item in value.items():
            owners = [] if name in section.model_fields else _owners((key, name), model)
            if not owners:
                inner[name] = item
            elif item is not None:
                aside.append(((key, name), owners))
        kept[key] = inner
    return kept, aside


def union_json_schema(handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    """`JobSpec` in the JSON Schema: one of the recipes' spec models, by `task`."""
    from pydantic_core import core_schema

    mapping: dict[str, str] = {}
    for task, recipe in all_recipes().items():
        model = recipe.spec_model
        schema = handler(core_schema.model_schema(model, model.__pydantic_core_schema__))
        # Only the reference: the model's own keywords beside it (`additionalProperties`,
        # with no `properties` at that level) would admit nothing but `{}`.
        mapping[task] = schema["$ref"]
    return {
        "title": "JobSpec",
        "description": "A job spec: the fields of the recipe its `task` names"
        f" (default `{DEFAULT_TASK}`).",
        "anyOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "task", "mapping": mapping},
    }
