"""The worker's device pool (worker/devices.py) and the clone's merge patch."""

from __future__ import annotations

import pytest

from api.routes.job_actions import merge_patch
from worker.devices import DevicePool, configured, probed


def test_a_pool_hands_out_free_devices_and_takes_them_back() -> None:
    pool = DevicePool(ids=["0", "1", "2", "3"], gpu=True)
    with pool.claiming():
        first = pool.take(1)
        pair = pool.take(2)
    assert (first, pair, pool.free, pool.total) == (["0"], ["1", "2"], 1, 4)
    assert pool.child_env(pair) == {"CUDA_VISIBLE_DEVICES": "1,2"}
    with pytest.raises(RuntimeError, match="2 devices asked, 1 free"):
        pool.take(2)
    pool.give_back(first)
    with pool.claiming():
        assert pool.take(2) == ["0", "3"]  # lowest ids first


def test_cpu_slots_set_no_cuda_devices_and_the_defaults() -> None:
    slots = configured([], 2)
    assert slots is not None and slots.total == 2 and not slots.gpu
    assert slots.child_env(slots.take(1)) == {}
    # The ranks of a job of several slots run on the CPU, whatever the spec says (gloo).
    assert slots.child_env(["slot0", "slot1"]) == {"ACCELERATE_USE_CPU": "true"}
    assert configured(["0", "2"], None) == DevicePool(ids=["0", "2"], gpu=True)
    assert configured([], None) is None  # every GPU the probe sees
    assert probed(0).total == 1 and not probed(0).gpu
    assert probed(2).ids == ["0", "1"] and probed(2).gpu
    assert probed(2).describe() == {"devices": 2, "device_ids": ["0", "1"], "slots": False}


def test_merge_patch_follows_rfc_7396() -> None:
    spec = {"name": "a", "training_args": {"max_steps": 5, "seed": 1}, "tags": {"t": "x"}}
    patched = merge_patch(spec, {"training_args": {"max_steps": 2}, "tags": None, "name": "b"})
    assert patched == {"name": "b", "training_args": {"max_steps": 2, "seed": 1}}
    assert spec["training_args"] == {"max_steps": 5, "seed": 1}  # the source is untouched
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # lists are replaced
    assert merge_patch({"a": 1}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}


def test_worker_refuses_bad_device_options() -> None:
    from typer.testing import CliRunner

    from traindepot.cli import app

    runner = CliRunner()
    bad_ids = runner.invoke(app, ["worker", "--gpus", "0,x"])
    assert bad_ids.exit_code == 2 and "'0,x' is not a list of device ids" in bad_ids.output
    both = runner.invoke(app, ["worker", "--gpus", "0", "--slots", "2"])
    assert both.exit_code == 2 and "not both" in both.output
    assert runner.invoke(app, ["worker", "--slots", "0"]).exit_code == 2
