"""The sweep contract's pure parts (traindepot/sweeps.py) and the prepared-data cache's
names and bounds (traindepot/dataset_cache.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.specs import tiny_spec
from traindepot import dataset_cache
from traindepot.sweeps import (
    SweepSpec,
    end_values,
    grid_values,
    space_problems,
    specs_to_check,
    trial_budget,
    trial_spec,
)

LEARNING_RATE = {"type": "float", "low": 1e-4, "high": 1e-2}


def sweep(**fields: Any) -> SweepSpec:
    body: dict[str, Any] = {
        "name": "s",
        "base": tiny_spec(),
        "search_space": {
            "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}
        },
        **fields,
    }
    return SweepSpec.model_validate(body)


def test_each_end_of_the_space_is_a_spec_to_check_with_the_others_at_their_first() -> None:
    s = sweep(
        search_space={
            "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2},
            "training_args.per_device_train_batch_size": {
                "type": "int",
                "low": 2,
                "high": 9,
                "step": 3,
            },
            "adapter.r": {"type": "categorical", "choices": [4, 8, 16]},
        }
    )
    checked = specs_to_check(s)
    # 2 + 2 + 3 values, and one spec with every parameter at its last value.
    assert len(checked) == 8
    assert end_values(s.search_space["training_args.per_device_train_batch_size"]) == [2, 8]
    last = checked[-1][1]
    assert last["training_args"]["learning_rate"] == 1e-2
    assert last["training_args"]["per_device_train_batch_size"] == 8
    assert last["adapter"] == {"r": 16}
    path, spec = checked[4]
    assert path == "adapter.r" and spec["adapter"] == {"r": 4}
    assert spec["training_args"]["learning_rate"] == 1e-4  # the others at their first value


@pytest.mark.parametrize(
    ("space", "loc", "kind"),
    [
        ({"type": "float", "low": 0, "high": 1, "log": True}, ["low"], "log_low_not_positive"),
        ({"type": "int", "low": 5, "high": 1}, ["low"], "bounds_invalid"),
        ({"type": "categorical", "choices": [1, "a"]}, ["choices"], "choices_mixed_types"),
        ({"type": "categorical", "choices": [True, 1]}, ["choices"], "choices_mixed_types"),
        ({"type": "categorical", "choices": [1, 1]}, ["choices"], "choices_repeat"),
    ],
)
def test_space_rules_name_the_path(space: dict[str, Any], loc: list[str], kind: str) -> None:
    found = space_problems(sweep(search_space={"training_args.x": space}))
    assert [(list(p.loc), p.type) for p in found] == [
        (["search_space", "training_args.x", *loc], kind)
    ]


def test_where_a_trial_runs_cannot_be_searched_and_a_float_grid_needs_points() -> None:
    found = space_problems(
        sweep(
            sampler="grid",
            search_space={
                "queue": {"type": "categorical", "choices": ["a", "b"]},
                "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2},
            },
        )
    )
    assert [(list(p.loc), p.type) for p in found] == [
        (["search_space", "queue"], "not_searchable"),
        (["search_space", "training_args.learning_rate", "grid_points"], "grid_points_missing"),
    ]


def test_a_grid_caps_the_trials_at_its_size() -> None:
    s = sweep(
        sampler="grid",
        max_trials=100,
        search_space={
            "training_args.learning_rate": {
                "type": "float",
                "low": 1e-4,
                "high": 1e-2,
                "log": True,
                "grid_points": 3,
            },
            "training_args.warmup_steps": {"type": "int", "low": 0, "high": 20, "step": 10},
        },
    )
    assert grid_values(s.search_space["training_args.learning_rate"]) == pytest.approx(
        [1e-4, 1e-3, 1e-2]
    )
    assert trial_budget(s) == 9


def test_a_trial_spec_is_the_base_with_its_values_named_and_tagged() -> None:
    s = sweep()
    spec = trial_spec(s, "abc", 3, {"training_args.learning_rate": 0.005})
    assert spec["training_args"]["learning_rate"] == 0.005
    assert spec["name"] == "s-trial-3"
    assert spec["tags"] == {"sweep": "abc", "trial": "3"}
    assert s.base["training_args"] == tiny_spec()["training_args"]  # the base is as it was


def test_a_cache_entry_is_named_by_what_decides_the_data(tmp_path: Path) -> None:
    spec = tiny_spec()
    name = dataset_cache.key(spec, [])
    assert name == dataset_cache.key({**spec, "training_args": {"learning_rate": 1}}, [])
    assert name == dataset_cache.key({**spec, "adapter": {"r": 4}, "name": "other"}, [])
    assert name != dataset_cache.key({**spec, "preprocessing": {"max_length": 16}}, [])
    data = tmp_path / "train.txt"
    data.write_text("a\n")
    with_file = dataset_cache.key(spec, [data])
    assert with_file is not None and with_file != name
    data.write_text("ab\n")  # changed in place: another entry
    assert dataset_cache.key(spec, [data]) != with_file
    assert dataset_cache.key(spec, [tmp_path / "missing.txt"]) is None
    hub = {**spec, "dataset": {"hub": {"path": "x/y"}}}
    assert dataset_cache.key(hub, []) is None  # may change under the same name
    pinned = {**spec, "dataset": {"hub": {"path": "x/y", "revision": "abc"}}}
    assert dataset_cache.key(pinned, []) is not None


def entry(directory: Path, name: str, size: int, used: float) -> Path:
    path = directory / name
    (path / "train").mkdir(parents=True)
    (path / "train" / "data.arrow").write_bytes(b"x" * size)
    (path / dataset_cache.META).write_text("{}")
    os.utime(path / dataset_cache.META, (used, used))
    return path


def test_the_cache_keeps_its_bound_least_recently_used_first_and_gc_finds_old_ones(
    tmp_path: Path,
) -> None:
    now = time.time()
    old = entry(tmp_path, "old", 1000, now - 300)
    mid = entry(tmp_path, "mid", 1000, now - 200)
    new = entry(tmp_path, "new", 1000, now - 100)
    staging = tmp_path / ".half.123"
    staging.mkdir()
    os.utime(staging, (now - 1000, now - 1000))
    assert [e for e, _, _ in dataset_cache.entries(tmp_path)] == [old, mid, new]
    assert dataset_cache.evict(tmp_path, 2100, keep=old) == [mid]
    assert old.exists() and not mid.exists() and new.exists()
    dataset_cache.touch(old)  # used again: now the newest
    assert [e for e, _ in dataset_cache.unused_since(tmp_path, now - 50)] == [new, staging]
