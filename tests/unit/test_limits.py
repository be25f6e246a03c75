"""Issue 11, the pure parts: server limits on a spec, queue names, local model directories,
the training child's environment, its budgets and the stream slot counter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.stream_slots import StreamSlots, is_stream
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.artifacts import disk_usage
from traindepot.limits import apply_defaults, check_limits
from traindepot.localpaths import PathRefused, model_dir_problems, resolve_allowed
from traindepot.parameters import count_parameters
from traindepot.queues import check_queue_name, is_broker_name
from traindepot.settings import Settings
from traindepot.spec import JobSpec
from worker.budget import Budget, tree_rss
from worker.child_env import child_environment


def spec_of(**overrides: Any) -> JobSpec:
    return JobSpec.model_validate(tiny_spec(**overrides))


def problems(spec: JobSpec, **settings: Any) -> dict[tuple[str | int, ...], str]:
    found: dict[tuple[str | int, ...], str] = {}
    for p in check_limits(spec, Settings(**settings)):
        found[p.loc] = f"{found.get(p.loc, '')} {p.msg}".strip()
    return found


# --- limits ------------------------------------------------------------------------------------
def test_a_tiny_spec_is_within_every_default_limit() -> None:
    assert problems(spec_of()) == {}


@pytest.mark.parametrize(
    ("overrides", "loc", "limit"),
    [
        ({"preprocessing": {"max_length": 1_000_000}}, ("preprocessing", "max_length"), "8,192"),
        (
            {"training_args": {"max_steps": 10**9, "per_device_train_batch_size": 4}},
            ("training_args", "max_steps"),
            "10,000,000",
        ),
        (
            {"training_args": {"num_train_epochs": 1e9, "max_steps": -1}},
            ("training_args", "num_train_epochs"),
            "1,000",
        ),
        (
            {"training_args": {"dataloader_num_workers": 64}},
            ("training_args", "dataloader_num_workers"),
            "4",
        ),
        ({"limits": {"max_runtime_seconds": 1e9}}, ("limits", "max_runtime_seconds"), "604,800"),
        ({"queue": "unacked"}, ("queue",), "broker"),
        ({"queue": "unacked_index"}, ("queue",), "broker"),
        ({"queue": "other"}, ("queue",), "'default'"),
        ({"model": {"trust_remote_code": True}}, ("model", "trust_remote_code"), "ALLOW"),
    ],
)
def test_each_limit_names_its_field_and_the_limit(
    overrides: dict[str, Any], loc: tuple[str, ...], limit: str
) -> None:
    found = problems(spec_of(**overrides))
    assert loc in found, found
    assert limit in found[loc]


def test_epochs_times_rows_is_bounded() -> None:
    spec = spec_of(training_args={"num_train_epochs": 900, "max_steps": -1})
    found = problems(spec, max_train_samples=1000)
    assert "num_train_epochs x rows" in found[("training_args", "num_train_epochs")]


def test_a_configured_queue_is_accepted() -> None:
    assert problems(spec_of(queue="gpu"), queues=["default", "gpu"]) == {}


@pytest.mark.parametrize(
    "name",
    ["unacked", "unacked_index", "unacked_mutex", "_kombu.binding.default", "x.celery.pidbox"],
)
def test_broker_names_can_never_be_configured_queues(name: str) -> None:
    assert is_broker_name(name)
    with pytest.raises(ValidationError, match="broker"):
        Settings(queues=["default", name])


def test_queues_are_split_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINDEPOT_QUEUES", "default, gpu,")
    assert Settings().queues == ["default", "gpu"]
    monkeypatch.setenv("TRAINDEPOT_QUEUES", "default,unacked")
    with pytest.raises(ValidationError, match="broker"):
        Settings()


def test_queue_names_are_checked_in_settings() -> None:
    assert check_queue_name("default") is None
    with pytest.raises(ValidationError):
        Settings(queues=["Bad Queue"])
    with pytest.raises(ValidationError):
        Settings(queues=[])


def test_the_default_time_limit_is_filled_in() -> None:
    spec = spec_of()
    apply_defaults(spec, Settings(default_max_runtime_seconds=60))
    assert spec.limits.max_runtime_seconds == 60
    given = spec_of(limits={"max_runtime_seconds": 5})
    apply_defaults(given, Settings())
    assert given.limits.max_runtime_seconds == 5


def test_parameters_are_counted_on_the_meta_device() -> None:
    tiny = count_parameters(spec_of())
    assert tiny is not None and 0 < tiny < 1_000_000
    huge = spec_of(
        model={"from_config": {**TINY_GPT2, "n_layer": 50, "n_embd": 4096, "n_head": 32}}
    )
    count = count_parameters(huge)
    assert count is not None and count > 10_000_000_000
    found = problems(huge)
    assert "1,000,000,000" in found[("model", "from_config")]


def test_a_layer_bomb_is_counted_without_building_its_layers() -> None:
    """A million layers are never built, even on the meta device: counted with 1 and 2
    layers and extrapolated (exact for a stack of identical layers)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    def counted(layers: int) -> int:
        found = count_parameters(spec_of(model={"from_config": {**TINY_GPT2, "n_layer": layers}}))
        assert found is not None
        return found

    config = {k: v for k, v in TINY_GPT2.items() if k != "model_type"}
    built = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        AutoConfig.for_model("gpt2", **{**config, "n_layer": 5, "vocab_size": 260})
    )
    assert counted(5) == sum(p.numel() for p in built.parameters())
    one, two = counted(1), counted(2)
    assert counted(1_000_000) == one + 999_999 * (two - one)


def test_a_config_that_does_not_build_is_left_to_the_worker() -> None:
    spec = spec_of(model={"from_config": {**TINY_GPT2, "n_embd": 30, "n_head": 4}})
    assert count_parameters(spec) is None


# --- local paths -------------------------------------------------------------------------------
def test_paths_are_resolved_before_they_are_checked(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "data.txt").write_text("x")
    link = allowed / "link.txt"
    link.symlink_to("/etc/hostname")
    assert resolve_allowed(str(allowed / "data.txt"), [allowed]) == allowed / "data.txt"
    with pytest.raises(PathRefused, match="outside the allowed paths"):
        resolve_allowed(str(link), [allowed])
    with pytest.raises(PathRefused, match="does not exist"):
        resolve_allowed(str(allowed / "missing"), [allowed])


def test_model_directories_are_checked_file_by_file(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"pickle")
    assert "pickled weights only" in model_dir_problems(model, allow_pickle=False)[0]
    assert model_dir_problems(model, allow_pickle=True) == []
    (model / "model.safetensors").write_bytes(b"st")
    assert model_dir_problems(model, allow_pickle=False) == []
    (model / "tokenizer.json").symlink_to("/etc/hostname")
    found = model_dir_problems(model, allow_pickle=False)
    assert len(found) == 1 and "points outside the model directory" in found[0]


# --- the training child ------------------------------------------------------------------------
def test_the_child_environment_is_an_allowlist() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "0",
        "TRAINDEPOT_DATABASE_URL": "postgresql://x",
        "TRAINDEPOT_API_KEYS": "secret",
        "TRAINDEPOT_SECRET_KEY": "the server secret that API keys are hashed under",
        "TRAINDEPOT_API_KEY": "an admin key of the CLI",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "GITHUB_TOKEN": "secret",
        "OPERATOR_THING": "kept on request",
    }
    env = child_environment(environ, {"PYTHONUNBUFFERED": "1"}, ["OPERATOR_THING"])
    assert set(env) == {
        "PATH",
        "HF_HUB_OFFLINE",
        "OMP_NUM_THREADS",
        "CUDA_VISIBLE_DEVICES",
        "TRAINDEPOT_DATABASE_URL",
        "OPERATOR_THING",
        "PYTHONUNBUFFERED",
    }


def test_budget_measures_memory_of_the_tree_and_disk(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100_000)
    assert disk_usage(tmp_path, allocated=True) >= 100_000
    assert tree_rss(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        low = Budget(pid=child.pid, job_dir=tmp_path, memory_bytes=1, disk_bytes=10**12, every=0)
        over = low.exceeded()
        assert over is not None and over.reason == "oom"
        full = Budget(pid=child.pid, job_dir=tmp_path, memory_bytes=10**12, disk_bytes=10, every=0)
        over = full.exceeded()
        assert over is not None and over.reason == "disk" and "disk budget" in over.message
        fine = Budget(
            pid=child.pid, job_dir=tmp_path, memory_bytes=10**12, disk_bytes=10**12, every=0
        )
        assert fine.exceeded() is None
    finally:
        child.kill()
        child.wait()


# --- stream slots ------------------------------------------------------------------------------
def test_stream_slots_per_key_and_in_all() -> None:
    slots = StreamSlots(per_key=2, total=3)
    assert slots.acquire("a") and slots.acquire("a")
    assert not slots.acquire("a")
    assert slots.acquire("b")
    assert not slots.acquire("c")  # 3 in all
    slots.release("a")
    assert slots.acquire("c")
    assert slots.in_use() == 3 and slots.in_use("a") == 1


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/jobs/x/events", b"", True),
        ("/jobs/x/logs", b"follow=true", True),
        ("/jobs/x/logs", b"tail=5", False),
        ("/jobs/x", b"", False),
    ],
)
def test_what_counts_as_a_stream(path: str, query: bytes, expected: bool) -> None:
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query}
    assert is_stream(scope) is expected


def test_nul_characters_are_refused_where_they_are() -> None:
    found = problems(spec_of(name="a\x00b", tags={"k\x00": "v"}))
    assert "NUL" in found[("name",)]
    assert ("tags", "k\x00") in found
