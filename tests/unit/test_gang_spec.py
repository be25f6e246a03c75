"""Issue 28: `resources.nodes` in the spec (traindepot/spec.py), its check against the live
workers of the queue (traindepot/validation.py), and the column it fills (db/jobs.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.specs import tiny_spec
from traindepot.device_checks import WorkerDevices, check_devices
from traindepot.spec import JobSpec


def workers(*devices: int) -> list[WorkerDevices]:
    return [
        WorkerDevices(worker=f"w:{n}", cuda=False, bf16=False, tf32=False, devices=count)
        for n, count in enumerate(devices)
    ]


def test_one_node_by_default_and_nodes_times_gpus_ranks() -> None:
    assert JobSpec.model_validate(tiny_spec()).resources.nodes == 1
    spec = JobSpec.model_validate(tiny_spec(resources={"nodes": 3, "gpus": 2}))
    assert (spec.resources.nodes, spec.resources.gpus) == (3, 2)


@pytest.mark.parametrize("nodes", [0, -1, 65, "two"])
def test_nodes_out_of_range_is_refused(nodes: object) -> None:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(tiny_spec(resources={"nodes": nodes}))
    assert caught.value.errors()[0]["loc"] == ("resources", "nodes")


def test_a_gang_needs_that_many_live_workers_with_the_devices() -> None:
    spec = JobSpec.model_validate(tiny_spec(resources={"nodes": 3, "gpus": 2}))
    # Three workers, but one with a single slot: only two could sit in the gang.
    found = check_devices(spec, workers(2, 2, 1), queue="gangs")
    assert [(p.loc, p.type) for p in found] == [(("resources", "nodes"), "device_unavailable")]
    assert "3 workers with 2 devices" in found[0].msg and "has 2" in found[0].msg
    assert check_devices(spec, workers(2, 2, 4), queue="gangs") == []
    assert check_devices(spec, None, queue="gangs") == []  # nobody registered yet: accepted


def test_a_gang_wider_than_any_worker_is_refused_once() -> None:
    spec = JobSpec.model_validate(tiny_spec(resources={"nodes": 2, "gpus": 4}))
    found = check_devices(spec, workers(2, 2), queue="gangs")
    assert [p.loc for p in found] == [("resources", "gpus")]


def test_a_sweep_s_trials_are_jobs_of_one_worker() -> None:
    from traindepot.sweeps import SweepSpec, space_problems

    def sweep(resources: dict[str, int]) -> SweepSpec:
        return SweepSpec.model_validate(
            {
                "name": "s",
                "base": tiny_spec(resources=resources),
                "search_space": {
                    "training_args.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}
                },
            }
        )

    found = space_problems(sweep({"nodes": 2, "gpus": 1}))
    assert [p.loc for p in found] == [("base", "resources", "nodes")]
    assert space_problems(sweep({"nodes": 1, "gpus": 2})) == []
