"""Issue 28: a job bigger than one machine, on real workers in network namespaces of their
own (tests/integration/gang_workers.py):

- a 2-node x 2-slot job trains to the same losses as one process with the same global
  batch (the tolerance test_multirank.py justified), 4x the samples per step of one rank;
- a cancel, and the time limit, stop every rank of every node at one step, with one
  checkpoint written by all;
- an exception on node 1's rank is the job's error, naming the node and the rank;
- two gangs and a stream of small jobs on the three workers: nothing deadlocks, both gangs
  start within the bound of the rule (db/gangs.py), small jobs keep running meanwhile.

A node's death and a node's warm shutdown: test_gang_faults.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.integration.conftest import Stack, process_gone
from tests.integration.gang_workers import HOLD_SECONDS, Gang, gang_workers, launchers_of
from tests.integration.test_multirank import (
    assert_losses_of_one_process,
    assert_only_rank_0_stored_points,
    rank_processes,
    wait_for,
)
from tests.netns import remote_addresses
from worker.checkpoints import is_complete

pytestmark = pytest.mark.integration

QUEUE = "gangs"


@pytest.fixture(scope="module")
def gang(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gang]:
    with gang_workers(stack, tmp_path_factory.mktemp("gangs"), QUEUE) as g:
        yield g


@pytest.mark.timeout(900)  # two waits of up to 300 s each
def test_two_nodes_of_two_ranks_train_like_one_process(gang: Gang) -> None:
    stack = gang.stack
    job = stack.submit(gang.spec("gang-2x2", max_steps=6))
    # One process, batch 8 = 2 nodes x 2 ranks x 2: accelerate deals the sampler's batches
    # of 2 round-robin to ranks 0..3 (node 0's two, then node 1's), which together are the
    # single process's batch of 8 (test_multirank.py says why the losses then agree).
    single = stack.submit(
        gang.spec("gang-reference", nodes=1, gpus=1, max_steps=6, per_device_train_batch_size=8)
        | {"queue": "default"}
    )
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    reference = stack.wait(single["id"], timeout=300)
    assert reference["status"] == "succeeded", reference["error"]
    assert_losses_of_one_process(stack, job["id"], single["id"], steps=6)
    # 4 ranks: 4x the samples of a 1-rank job of the same per-device batch per step.
    assert done["progress"]["samples_per_step"] == 8
    nodes = done["attempts"][0]["nodes"]
    assert [(n["node"], n["devices"]) for n in nodes] == [(0, 2), (1, 2)]
    assert len({n["worker"] for n in nodes}) == 2
    assert done["attempts"][0]["worker"] == nodes[0]["worker"]  # node 0 holds the lease
    # Every rank joined one gloo group of 4; node 0's rank 0 alone reported.
    log0 = (gang.home_of(nodes[0]["worker"]) / "jobs" / job["id"] / "train.log").read_text()
    log1 = (gang.home_of(nodes[1]["worker"]) / "jobs" / job["id"] / "train.log").read_text()
    for rank, log in ((0, log0), (1, log0), (2, log1), (3, log1)):
        assert f"rank {rank} of 4: gloo process group" in log, log
    assert "node 1 of 2" in log1
    assert_only_rank_0_stored_points(log0 + "\n" + log1)
    # ... and exported the model, which node 0's worker uploaded to the bucket.
    assert done["result"]["global_step"] == 6
    manifest = gang.store().read_json(job["id"], "model/manifest.json")
    assert manifest is not None, "no model in the bucket"
    assert "model.safetensors" in {entry["path"] for entry in manifest["files"]}, manifest


# Long enough for a loaded machine to start both nodes' ranks and train two steps.
TIME_LIMIT = 60


@pytest.mark.parametrize("stop", ["cancel", "time-limit"])
def test_a_cancel_or_the_time_limit_stops_every_rank_of_every_node_at_one_step(
    gang: Gang, stop: str
) -> None:
    stack = gang.stack
    limits = {"max_runtime_seconds": TIME_LIMIT if stop == "time-limit" else None}
    job = stack.submit(gang.spec(f"gang-{stop}", gpus=1, max_steps=100_000) | {"limits": limits})
    job_id = job["id"]
    wait_for("training", lambda: len(stack.train_steps(job_id)) >= 2, 240)
    workers = gang.nodes(job_id, 1)
    launchers = [p for w in workers for p in launchers_of(gang.proc_of(w).pid)]
    assert len(launchers) == 2
    if gang.netns is not None:
        # The ranks' process group connects the nodes' namespace addresses.
        addresses = {
            a
            for (a,) in stack.sql(
                "SELECT address FROM gang_seats WHERE job_id = %s", uuid.UUID(job_id)
            )
        }
        assert all(a.startswith(gang.netns.subnet + ".") for a in addresses), addresses
        assert len(addresses) == 2
        rank_1 = rank_processes(gang.proc_of(workers[1]).pid)[0]
        remote = remote_addresses(rank_1.pid)
        assert remote & addresses - {gang.netns.host_address}, (remote, addresses)
    if stop == "cancel":
        assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        done = stack.wait(job_id, timeout=120)
        assert done["status"] == "cancelled", done["error"]
    else:
        # Every node's supervisor has the job's deadline; the first to reach it stops all.
        done = stack.wait(job_id, timeout=TIME_LIMIT + 120)
        assert done["status"] == "failed"
        assert (done["error"]["reason"], done["error"]["type"]) == ("timeout", "TimeoutError")
        assert f"max_runtime_seconds={TIME_LIMIT}" in done["error"]["message"]
        attempt = stack.attempts(job_id)[0]
        ran = (attempt["ended_at"] - attempt["started_at"]).total_seconds()
        assert TIME_LIMIT - 1 <= ran <= TIME_LIMIT + 60, ran  # stopped at its limit, not killed
    step = done["result"]["global_step"]
    assert 2 <= step < 100_000
    # One checkpoint, of the stop step, by both ranks: node 0's has the weights and rank
    # 0's RNG state, node 1's (in its own home) rank 1's.
    node0 = gang.home_of(workers[0]) / "jobs" / job_id
    node1 = gang.home_of(workers[1]) / "jobs" / job_id
    assert is_complete(node0 / "output" / f"checkpoint-{step}")
    assert [p.name for p in (node0 / "output").glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert [p.name for p in (node1 / "node-1" / "output").glob("checkpoint-*/rng_state_*")] == [
        "rng_state_1.pth"
    ]
    assert (node1 / "node-1" / "output" / f"checkpoint-{step}").is_dir()
    wait_for("both launchers to exit", lambda: all(map(process_gone, launchers)), 30)


def test_an_exception_on_node_1_names_the_node_and_the_rank(gang: Gang) -> None:
    stack = gang.stack
    # test_multirank.py's mistake: with sequential sampling and 2 examples per rank, rank 1
    # (node 1's only rank) gets the two long texts, which a 64-position model cannot embed.
    job_spec = gang.spec(
        "gang-node-1-fails",
        gpus=1,
        max_steps=2,
        train_sampling_strategy="sequential",
    )
    long_text = "x" * 100
    job_spec["dataset"]["rows"] = [
        {"text": t} for t in ("short one", "short two", long_text, long_text)
    ]
    job_spec["preprocessing"] = {"max_length": 32, "truncation": False, "padding": "longest"}
    job = stack.submit(job_spec)
    done = stack.wait(job["id"], timeout=240)
    assert done["status"] == "failed"
    error = done["error"]
    assert (error.get("node"), error.get("rank"), error["type"]) == (1, 1, "IndexError"), error
    assert error["message"].startswith("node 1, rank 1: "), error


# Its own waits add up past pytest's 300 s: on a loaded machine four times slower than this
# suite's usual one (CI, 2026-12-07), it was still waiting for a gang at 300 s.
@pytest.mark.timeout(1200)
def test_two_gangs_and_a_stream_of_small_jobs_share_three_workers(gang: Gang) -> None:
    """The bound (db/gangs.py): once no other gang holds the devices it needs, a gang starts
    within the hold + the longest remaining run of a small job on its workers (+ wake-ups
    and the gang's own start). Small jobs keep coming the whole time; none is starved."""
    stack = gang.stack
    small: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        n = 0
        while not stop.is_set():
            small.append(stack.submit(gang.spec(f"small-{n}", nodes=1, gpus=1, max_steps=3))["id"])
            n += 1
            stop.wait(3.0)

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        # Every worker's two slots busy when the gangs come: the first waits for its seats
        # past the hold, then its workers drain (take no new small job from the stream).
        fill = [
            stack.submit(gang.spec(f"fill-{n}", nodes=1, gpus=1, max_steps=40))["id"]
            for n in range(6)
        ]
        small.extend(fill)
        wait_for("every slot busy", lambda: all(stack.train_steps(f) for f in fill), 240)
        bigs = [stack.submit(gang.spec(f"big-{n}", max_steps=30))["id"] for n in range(2)]
        ends = [stack.wait(big, timeout=600) for big in bigs]
    finally:
        stop.set()
        feeder.join()
    assert all(end["status"] == "succeeded" for end in ends), ends
    for job_id in small:
        assert stack.wait(job_id, timeout=300)["status"] == "succeeded"

    def span(job_id: str) -> tuple[datetime, datetime, datetime]:
        row = stack.sql(
            "SELECT created_at, started_at, finished_at FROM jobs WHERE id = %s",
            uuid.UUID(job_id),
        )[0]
        return row[0], row[1], row[2]

    smalls = [span(job_id) for job_id in small]
    longest_small = max((end - start).total_seconds() for _, start, end in smalls)
    first, second = sorted((span(big) for big in bigs), key=lambda s: s[1])
    # Slack: the wake-ups (1 s), starting 4 ranks on a shared 2-core machine, the seats' polls.
    bound = HOLD_SECONDS + longest_small + 60
    waits = (
        (first[1] - first[0]).total_seconds(),
        # The second gang's workers are free of the first gang once it ends.
        (second[1] - max(second[0], first[2])).total_seconds(),
    )
    # Small jobs that were queued when the first gang formed and started only after it: the
    # ones its workers' drain held back (none would wait so with a free slot).
    held = [s for s in smalls if s[0] < first[1] <= s[1]]
    print(
        f"gang waits {waits[0]:.1f} s, {waits[1]:.1f} s; the rule's part of the bound"
        f" {HOLD_SECONDS + longest_small:.1f} s; {len(small)} small jobs, {len(held)} held"
        " back until the first gang started"
    )  # -rP shows it
    assert waits[0] > 0  # it found every slot busy
    assert max(waits) <= bound, (waits, first, second, longest_small)
    # Small jobs started while each gang ran: the third worker kept taking them.
    for _, start, end in (first, second):
        assert any(start <= s_start <= end for _, s_start, _ in smalls), (start, end, smalls)
