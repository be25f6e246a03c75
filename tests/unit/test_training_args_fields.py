"""Every init field of the installed `TrainingArguments`, given a valid value that is not its
default, is accepted by the spec's validation, or refused with a problem about that field
(server-owned ones say so). Validation never sets up `torch.distributed` or a device."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from tests.specs import tiny_spec
from traindepot import training_args
from traindepot.problems import SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.validation import check_spec

# Values the type alone does not give (a free string with a meaning, a value that must
# fit the field's own rules), and fields that need others beside them.
VALUES: dict[str, Any] = {
    "optim_args": "betas=(0.9,0.98)",
    "optim_target_modules": ["attn"],
    "lr_scheduler_kwargs": {"num_cycles": 2},
    "activation_checkpointing_kwargs": {"use_reentrant": False},
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "liger_kernel_config": {"rope": True},
    "include_num_input_tokens_seen": "all",
    "include_for_metrics": ["inputs"],
    "torch_compile_backend": "inductor",
    "torch_compile_mode": "reduce-overhead",
    "eval_steps": 2,
    "save_steps": 2,
    "logging_steps": 2,
    "metric_for_best_model": "eval_loss",
    "label_names": ["labels"],
    "length_column_name": "n_tokens",
    "run_name": "run-1",
    "fsdp": "full_shard",
    "fsdp_config": {"min_num_params": 0},
    "debug": "underflow_overflow",
    "max_steps": 3,
    "data_seed": 3,
    "seed": 3,
    "dataloader_num_workers": 1,
    "dataloader_prefetch_factor": 2,
    "warmup_steps": 0.1,
    "adam_beta1": 0.8,
    "adam_beta2": 0.99,
    "label_smoothing_factor": 0.1,
    "neftune_noise_alpha": 5.0,
    "torch_empty_cache_steps": 2,
    "ddp_timeout": 60,
    "save_total_limit": 2,
    # An accelerate object, not JSON: the nearest a spec can send is its fields.
    "parallelism_config": {"dp_shard_size": 1},
}
NEEDS: dict[str, dict[str, Any]] = {
    "eval_steps": {"eval_strategy": "steps"},
    "eval_delay": {"eval_strategy": "steps"},
    "eval_on_start": {"eval_strategy": "steps"},
    "eval_accumulation_steps": {"eval_strategy": "steps"},
    "per_device_eval_batch_size": {"eval_strategy": "steps"},
    "load_best_model_at_end": {"eval_strategy": "steps", "save_strategy": "steps"},
    "metric_for_best_model": {"eval_strategy": "steps"},
    "greater_is_better": {"eval_strategy": "steps", "metric_for_best_model": "eval_loss"},
    "save_steps": {"save_strategy": "steps"},
    "dataloader_prefetch_factor": {"dataloader_num_workers": 1},
    "dataloader_persistent_workers": {"dataloader_num_workers": 1},
    "dataloader_multiprocessing_context": {"dataloader_num_workers": 1},
    "fsdp_config": {"fsdp": "full_shard"},
    "logging_steps": {"logging_strategy": "steps"},
    "bf16_full_eval": {"bf16": True},
}


def _non_default(field: dataclasses.Field[Any], hint: Any) -> Any:
    """A valid value unlike the default, generated from the type where it can be."""
    if field.name in VALUES:
        return VALUES[field.name]
    default = field.default
    choices = training_args.fields()[field.name].choices
    if choices:
        current = default.value if isinstance(default, enum.Enum) else default
        return next(c for c in choices if c != current)
    options = [a for a in (hint, *typing.get_args(hint)) if a is not type(None)]
    if bool in options:
        return not default if isinstance(default, bool) else True
    if int in options:
        return default + 1 if isinstance(default, int) else 2
    if float in options:
        return float(default) * 2 if isinstance(default, int | float) and default else 0.5
    if str in options:
        return "x"
    if dict in options or any(typing.get_origin(a) is dict for a in options):
        return {}
    raise AssertionError(f"no value for {field.name}: {hint}")


def _cases() -> list[tuple[str, dict[str, Any]]]:
    from transformers.training_args import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    cases = []
    for field in dataclasses.fields(TrainingArguments):
        if field.init:
            value = _non_default(field, hints[field.name])
            cases.append((field.name, {**NEEDS.get(field.name, {}), field.name: value}))
    return cases


CASES = _cases()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allowed_paths=[tmp_path])


def test_the_walk_covers_every_init_field() -> None:
    assert {name for name, _ in CASES} == set(training_args.fields())
    assert "ddp_backend" in training_args.fields()


@pytest.mark.parametrize(("name", "args"), CASES, ids=[name for name, _ in CASES])
def test_every_field_is_accepted_or_refused_about_itself(
    name: str, args: dict[str, Any], settings: Settings
) -> None:
    spec_args = {**tiny_spec()["training_args"], **args}
    evaluated = {"eval_fraction": 0.25} if "eval_strategy" in args else {}
    spec = JobSpec.model_validate(tiny_spec(training_args=spec_args, dataset={**evaluated}))
    try:
        effective = check_spec(spec, settings)
    except SpecInvalid as exc:
        for problem in exc.problems:
            assert problem.loc[:2] == ("training_args", name), (problem.loc, problem.msg)
            if training_args.owned_reason(name) is not None:
                assert problem.type == "server_owned" and "set by the server" in problem.msg
        return
    assert training_args.owned_reason(name) is None, f"{name} is the server's, yet accepted"
    json.dumps(effective)  # what POST /jobs/validate answers with
    reported = effective[name]
    expected = args[name]
    if isinstance(expected, list | dict) or isinstance(reported, list | dict | bool):
        return  # normalised by TrainingArguments (a debug string becomes a list, ...)
    assert reported == expected or str(reported) == str(expected), (reported, expected)


def test_ddp_backend_is_accepted_and_no_process_group_or_device_is_touched(
    settings: Settings,
) -> None:
    import torch.distributed
    from accelerate.state import PartialState

    # Other tests of this process may have built a real TrainingArguments (a worker's
    # build sets accelerate's state): start from none.
    PartialState._reset_state()
    for gpus in (1, 2):
        spec = JobSpec.model_validate(
            tiny_spec(training_args={"ddp_backend": "gloo"}, resources={"gpus": gpus})
        )
        assert check_spec(spec, settings)["ddp_backend"] == "gloo"
    assert not torch.distributed.is_initialized()
    assert PartialState._shared_state == {}  # accelerate's process-wide state never set


def test_a_single_process_build_leaves_the_backend_out() -> None:
    kwargs = training_args.job_kwargs({"ddp_backend": "gloo"}, output_dir="/o", process_group=False)
    assert "ddp_backend" not in kwargs
    kwargs = training_args.job_kwargs({"ddp_backend": "gloo"}, output_dir="/o", process_group=True)
    assert kwargs["ddp_backend"] == "gloo"
