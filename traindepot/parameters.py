"""A spec's model and its adapter counted on the meta device, without loading anything:
the model is built from its config (`from_config`, or the config of a local or Hub
`name_or_path` or of the model a `from_job` exported), deep models from one and two layers.
torch and transformers are imported lazily, under the import lock of
`traindepot.training_args`. The server's parameter limit (`traindepot.limits`) and the
`parameters` of a submit's answer read these counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traindepot import training_args
from traindepot.exported_models import exported_model_dir
from traindepot.spec import JobSpec, ModelSpec, is_local_path

__all__ = ["ParameterCount", "count_parameters", "parameter_count"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParameterCount:
    """The spec's model counted on the meta device: `total` is the base model's (what the
    server's limit applies to), `trainable` what the job trains (all of them, or the
    adapter's). With an adapter, `unmatched` lists the `target_modules` entries that match
    no module and `linear_layers` the model's linear layers (the names to pick from);
    `adapter_error` is peft's refusal of the adapter, if any."""

    total: int
    trainable: int
    unmatched: tuple[str, ...] = ()
    linear_layers: tuple[str, ...] = ()
    adapter_error: str | None = None


def count_parameters(spec: JobSpec, model: ModelSpec | None = None) -> int | None:
    """The parameters of the spec's (base) model, or of `model` (another model of the job,
    built by the spec's recipe), or None when not counted."""
    counted = parameter_count(spec, model)
    return counted.total if counted is not None else None


def parameter_count(spec: JobSpec, model: ModelSpec | None = None) -> ParameterCount | None:
    """The spec's model counted (with its adapter), or `model`, another model of the job
    (a reference model: no adapter); None when its config cannot be had here (a Hub model
    offline, a config that does not build: the worker reports those, and its memory
    budget bounds what it builds)."""
    other = model is not None
    model = spec.model if model is None else model
    vocab = _byte_level_vocab() if spec.tokenizer and spec.tokenizer.builtin else None
    task = str(spec.task)
    lora = None if other else _lora_kwargs(spec)
    try:
        if model.from_config is not None:
            overrides = dict(model.from_config)
            if vocab is not None:
                overrides.setdefault("vocab_size", vocab)
            material = json.dumps([task, overrides, lora], sort_keys=True)
            return _cached(material, lambda: _count(task, overrides, None, None, lora))
        if model.from_job is not None:  # the directory of the job's export
            name, revision = str(exported_model_dir(model.from_job)), None
        else:
            assert model.name_or_path is not None
            name, revision = model.name_or_path, model.revision
        if is_local_path(name):  # a directory may change: counted each time
            return _count(task, None, name, revision, lora)
        material = json.dumps([task, name, revision, lora], sort_keys=True)
        return _cached(material, lambda: _count(task, None, name, revision, lora))
    except Exception as exc:
        log.info("model parameters not counted (%s: %s)", type(exc).__name__, exc)
        return None


def _lora_kwargs(spec: JobSpec) -> dict[str, Any] | None:
    """peft's `LoraConfig` arguments of the spec's adapter (the worker builds the same)."""
    if spec.adapter is None:
        return None
    from traindepot.adapters import lora_config_kwargs
    from traindepot.recipes import recipe_for

    return lora_config_kwargs(spec.adapter, recipe_for(spec).adapter_task_type)


def _byte_level_vocab() -> int:
    return 256 + 4  # the byte alphabet and the specials of worker/byte_tokenizer.py


# Counts by a digest of what was counted (never the spec itself: a config can be large).
_counted: OrderedDict[str, ParameterCount] = OrderedDict()
_counted_lock = threading.Lock()
_CACHE_SIZE = 256


def _cached(material: str, count: Callable[[], ParameterCount]) -> ParameterCount:
    digest = hashlib.sha256(material.encode()).hexdigest()
    with _counted_lock:
        if digest in _counted:
            _counted.move_to_end(digest)
            return _counted[digest]
    value = count()
    with _counted_lock:
        _counted[digest] = value
        while len(_counted) > _CACHE_SIZE:
            _counted.popitem(last=False)
    return value


# Above this many layers the model is not built whole, even on the meta device (module
# objects are real Python objects): it is counted with 1 and 2 layers and extrapolated.
_BUILD_LAYERS = 2


def _count(
    task: str,
    overrides: dict[str, Any] | None,
    name_or_path: str | None,
    revision: str | None,
    lora: dict[str, Any] | None = None,
) -> ParameterCount:
    with training_args.import_lock():
        import torch
        from transformers import AutoConfig

        from traindepot.recipes import get

        recipe = get(task)
        if recipe is None:
            raise LookupError(f"no recipe for task {task!r}")
        model_class: Any = recipe.model_class()
        if lora is not None:
            from traindepot.adapters import count_adapter
    if overrides is not None:
        given = dict(overrides)
        # The worker takes the special token ids from the tokenizer (worker/builders.py);
        # they do not change the count, and a family's defaults (GPT-2's 50256) outside a
        # small vocabulary would only print a warning into the API's log.
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            given.setdefault(name, None)
        config = AutoConfig.for_model(str(given.pop("model_type")), **given)
    else:
        assert name_or_path is not None
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)

    def built_with(layers: int | None) -> ParameterCount:
        if layers is not None:
            config.num_hidden_layers = layers
        with torch.device("meta"):
            built = model_class.from_config(config)
            total = int(sum(p.numel() for p in built.parameters()))
            if lora is None:
                return ParameterCount(total=total, trainable=total)
            return count_adapter(built, lora, total)

    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers <= _BUILD_LAYERS:
        return built_with(None)
    # Every layer adds as many parameters, trainable ones too.
    one, two = built_with(1), built_with(2)
    return dataclasses.replace(
        two,
        total=one.total + (layers - 1) * (two.total - one.total),
        trainable=one.trainable + (layers - 1) * (two.trainable - one.trainable),
    )
