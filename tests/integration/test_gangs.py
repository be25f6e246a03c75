"""Issue 28: a job bigger than one machine, on real workers: three worker processes of two
CPU slots each (gloo), each with a `TRAINDEPOT_HOME` of its own and, as root, a network
namespace of its own (tests/netns.py: a bridge, a veth pair per worker); they share
PostgreSQL and Redis (through forwarders on the bridge's address) and an artifact store (a
directory standing for a bucket), nothing else. The rendezvous and the ranks' gloo traffic
cross the bridge between namespaces.

- a 2-node x 2-slot job trains to the same losses as one process with the same global
  batch (the tolerance test_multirank.py justified), 4x the samples per step of one rank;
- a node's worker SIGKILLed mid-run: every rank stops, the job resumes on the surviving
  worker and a new one from the newest checkpoint every node has, and succeeds;
- cancel stops every rank of every node at one step, with one checkpoint written by all;
- an exception on node 1's rank is the job's error, naming the node and the rank;
- two gangs and a stream of small jobs on the three workers: nothing deadlocks, both gangs
  start within the bound of the rule (db/gangs.py), small jobs keep running meanwhile.
"""

from __future__ import annotations

import math
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Stack, process_gone
from tests.integration.test_multirank import NO_DROPOUT, rank_processes, wait_for
from tests.netns import Forwarder, Netns, remote_addresses
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.stack import stop_process
from traindepot.store import store_at
from worker.checkpoints import is_complete, last_complete

pytestmark = pytest.mark.integration

QUEUE = "gangs"
HOLD_SECONDS = 3.0


@dataclass
class Gang:
    """The gang test's workers: each started with a home of its own and, as root, in a network
    namespace of its own (tests/netns.py), which reaches PostgreSQL and Redis through
    forwarders on the bridge's address and the other workers at their own addresses: the
    rendezvous and the ranks' gloo traffic cross the bridge, never loopback."""

    stack: Stack
    root: Path
    store: Path
    netns: Netns | None = None
    forwarders: dict[int, Forwarder] = field(default_factory=dict)
    homes: dict[int, Path] = field(default_factory=dict)  # worker pid -> its home
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.homes)
        home = self.root / f"home-{n}"
        home.mkdir(parents=True)
        settings = {
            "TRAINDEPOT_HOME": str(home),
            "TRAINDEPOT_ARTIFACTS_URL": str(self.store),
            "TRAINDEPOT_GANG_HOLD_SECONDS": str(HOLD_SECONDS),
            "TRAINDEPOT_TENANT_BUSY_RETRY_SECONDS": "1",
        }
        prefix: tuple[str, ...] = ()
        if self.netns is not None:
            ns = self.netns.add()
            prefix = self.netns.prefix(ns)
            env = self.stack.env
            settings |= {
                "TRAINDEPOT_DATABASE_URL": self.netns.through(
                    env["TRAINDEPOT_DATABASE_URL"], self.forwarders
                ),
                "TRAINDEPOT_REDIS_URL": self.netns.through(
                    env["TRAINDEPOT_REDIS_URL"], self.forwarders
                ),
                # Its address, and its ranks' gloo traffic, on that interface.
                "TRAINDEPOT_ADVERTISE_INTERFACE": self.netns.ifname(ns),
            }
        proc = self.stack.start_worker(
            f"gang-{n}", queues=QUEUE, args=("--slots", "2"), settings=settings, prefix=prefix
        )
        self.homes[proc.pid] = home
        self.procs.append(proc)
        return proc

    def registered(self, count: int) -> None:
        """`count` workers of 2 devices are live: a job of `count` nodes validates."""
        probe = spec("probe", nodes=count)
        deadline = time.monotonic() + 300
        while self.stack.http.post("/jobs/validate", json=probe).status_code != 200:
            assert time.monotonic() < deadline, f"{count} gang workers not registered"
            time.sleep(0.3)

    def home_of(self, worker: str) -> Path:
        """The home of a worker named by its id (`host:pid`)."""
        return self.homes[int(worker.rsplit(":", 1)[1])]

    def proc_of(self, worker: str) -> subprocess.Popen[bytes]:
        pid = int(worker.rsplit(":", 1)[1])
        return next(p for p in self.procs if p.pid == pid)

    def nodes(self, job_id: str, attempt: int) -> list[str]:
        rows = self.stack.sql(
            "SELECT worker FROM gang_seats WHERE job_id = %s AND attempt = %s ORDER BY node_rank",
            uuid.UUID(job_id),
            attempt,
        )
        return [row[0] for row in rows]


def spec(name: str, *, nodes: int = 2, gpus: int = 2, **training_args: Any) -> dict[str, Any]:
    return tiny_spec(
        name=name,
        queue=QUEUE,
        model={"from_config": {**TINY_GPT2, **NO_DROPOUT}},
        resources={"nodes": nodes, "gpus": gpus},
        training_args={"per_device_train_batch_size": 2, **training_args},
    )


@pytest.fixture(scope="module")
def gang(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gang]:
    root = tmp_path_factory.mktemp("gangs")
    netns = Netns() if Netns.available() else None
    if netns is not None:
        netns.up()
    g = Gang(stack, root, root / "store", netns)
    try:
        for _ in range(3):
            g.start()
        g.registered(3)
        yield g
    finally:
        for proc in g.procs:
            if proc in stack.workers:
                stop_process(proc, timeout=60)
                stack.workers.remove(proc)
        for forwarder in g.forwarders.values():
            forwarder.stop()
        if netns is not None:
            netns.down()


def running(stack: Stack, job_id: str) -> bool:
    job = stack.get(job_id)
    assert job["status"] in ("queued", "running"), (job, stack.attempts(job_id))
    return True


def launchers_of(pid: int) -> list[psutil.Process]:
    try:
        return [
            p
            for p in psutil.Process(pid).children(recursive=True)
            if "worker.launcher" in " ".join(p.cmdline())
        ]
    except psutil.Error:
        return []


def test_two_nodes_of_two_ranks_train_like_one_process(gang: Gang) -> None:
    stack = gang.stack
    job = stack.submit(spec("gang-2x2", max_steps=6))
    # One process, batch 8 = 2 nodes x 2 ranks x 2: accelerate deals the sampler's batches
    # of 2 round-robin to ranks 0..3 (node 0's two, then node 1's), which together are the
    # single process's batch of 8 (test_multirank.py says why the losses then agree).
    single = stack.submit(
        spec("gang-reference", nodes=1, gpus=1, max_steps=6, per_device_train_batch_size=8)
        | {"queue": "default"}
    )
    done = stack.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    reference = stack.wait(single["id"], timeout=300)
    assert reference["status"] == "succeeded", reference["error"]
    ours = [loss for _, loss in stack.train_losses(job["id"])]
    theirs = [loss for _, loss in stack.train_losses(single["id"])]
    assert len(ours) == len(theirs) == 6
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert math.isclose(a, b, rel_tol=1e-4), (step, ours, theirs)
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
    stored = [line for line in log0.splitlines() + log1.splitlines() if "points stored" in line]
    assert len(stored) == 1 and "[rank 0]" in stored[0], stored


@pytest.mark.parametrize("dead", [1, 0], ids=["node-1-dies", "node-0-dies"])
def test_a_sigkilled_node_stops_every_rank_and_the_job_resumes_on_any_two(
    gang: Gang, dead: int
) -> None:
    """Node 1's worker, or node 0's (the rendezvous host, whose rank 0 reports and uploads
    the checkpoints), is SIGKILLed mid-run: every rank stops, and the job resumes on two
    workers without it, from a checkpoint in the store, exactly: the model has dropout, so
    the steps trained twice (after the checkpoint, before the kill) have the same losses
    only if every rank's RNG state came back, node 1's too, on another worker."""
    stack = gang.stack
    max_steps = 150
    job = stack.submit(
        spec(
            "gang-killed",
            gpus=1,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=10,
            save_total_limit=3,
        )
        | {
            "limits": {"max_restarts": 3, "max_runtime_seconds": None},
            "model": {"from_config": TINY_GPT2},  # GPT-2's dropout, 0.1
        }
    )
    job_id = job["id"]
    first, second = wait_for("the gang", lambda: gang.nodes(job_id, 1), 240)
    output = gang.home_of(first) / "jobs" / job_id / "output"
    # A checkpoint whole in the store too: a new node 0 resumes from there (node 0's own
    # uploads die with its worker).
    store = store_at(str(gang.store))
    wait_for(
        "a checkpoint in the store",
        lambda: (
            running(stack, job_id) and last_complete(output) and store.complete_checkpoints(job_id)
        ),
        240,
    )
    survivor, victim = gang.proc_of(first), gang.proc_of(second)
    if dead == 0:
        survivor, victim = victim, survivor
    ranks = rank_processes(survivor.pid) + rank_processes(victim.pid)
    assert len(ranks) == 2
    assert max(stack.train_steps(job_id)) < max_steps  # mid-run
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    stack.workers.remove(victim)
    gang.procs.remove(victim)
    # Node 1's rank dies with its worker; node 0's with its peer (or its lease, at most
    # lease_seconds later): every rank stops.
    wait_for("every rank to stop", lambda: all(map(process_gone, ranks)), 60)
    killed_at = max(stack.train_steps(job_id, 1))
    # Attempt 1's losses, read before attempt 2 resumes (which drops its points past the
    # checkpoint: the job keeps one axis), at least a lease later.
    before = dict(stack.train_losses(job_id))
    gang.start()  # the new worker; the third one of the module is still there

    done = stack.wait(job_id, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2 and done["result"]["global_step"] == max_steps
    attempts = stack.attempts(job_id)
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    resumed = attempts[1]["resumed_from_step"]
    assert resumed is not None and 0 < resumed <= killed_at
    second_nodes = gang.nodes(job_id, 2)
    assert (first, second)[dead] not in second_nodes and len(set(second_nodes)) == 2
    assert stack.train_steps(job_id) == list(range(1, max_steps + 1))  # one unbroken axis
    after = dict(stack.train_losses(job_id))
    again = [step for step in before if step > resumed]
    assert again, (resumed, killed_at)  # some steps were trained twice
    assert [after[step] for step in again] == [before[step] for step in again]


# Long enough for a loaded machine to start both nodes' ranks and train two steps.
TIME_LIMIT = 40


@pytest.mark.parametrize("stop", ["cancel", "time-limit"])
def test_a_cancel_or_the_time_limit_stops_every_rank_of_every_node_at_one_step(
    gang: Gang, stop: str
) -> None:
    stack = gang.stack
    limits = {"max_runtime_seconds": TIME_LIMIT if stop == "time-limit" else None}
    job = stack.submit(spec(f"gang-{stop}", gpus=1, max_steps=100_000) | {"limits": limits})
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


def test_a_node_s_warm_shutdown_stops_every_node_at_one_step_and_hands_the_job_back(
    gang: Gang,
) -> None:
    stack = gang.stack
    job = stack.submit(spec("gang-shutdown", gpus=1, max_steps=100_000))
    job_id = job["id"]
    wait_for("training", lambda: len(stack.train_steps(job_id)) >= 2, 240)
    first, second = gang.nodes(job_id, 1)
    leaving = gang.proc_of(second)
    leaving.send_signal(signal.SIGTERM)  # node 1's worker shuts down (warm)
    stopped = wait_for(
        "attempt 1 released",
        lambda: (
            running(stack, job_id)
            and [a for a in stack.attempts(job_id) if a["outcome"] == "released"]
        ),
        120,
    )
    assert stopped[0]["attempt"] == 1
    leaving.wait(60)
    stack.workers.remove(leaving)
    gang.procs.remove(leaving)
    step = max(stack.train_steps(job_id, 1))
    # Every rank stopped at that step and saved it together: node 0 has the checkpoint.
    node0 = gang.home_of(first) / "jobs" / job_id / "output" / f"checkpoint-{step}"
    assert is_complete(node0), sorted(p.name for p in node0.parent.iterdir())
    gang.start()
    # The next attempt resumes from it on two of the workers left, then is cancelled.
    wait_for("attempt 2 training", lambda: stack.train_steps(job_id, 2), 240)
    assert stack.attempts(job_id)[1]["resumed_from_step"] == step
    assert stack.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert stack.wait(job_id, timeout=120)["status"] == "cancelled"


def test_an_exception_on_node_1_names_the_node_and_the_rank(gang: Gang) -> None:
    stack = gang.stack
    # test_multirank.py's mistake: with sequential sampling and 2 examples per rank, rank 1
    # (node 1's only rank) gets the two long texts, which a 64-position model cannot embed.
    job_spec = spec(
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
            small.append(stack.submit(spec(f"small-{n}", nodes=1, gpus=1, max_steps=3))["id"])
            n += 1
            stop.wait(1.5)

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        time.sleep(3)  # small jobs run on every worker first
        bigs = [stack.submit(spec(f"big-{n}", max_steps=30))["id"] for n in range(2)]
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
    assert (first[1] - first[0]).total_seconds() <= bound, (first, longest_small)
    # The second gang's workers are free of the first gang once it ends.
    assert (second[1] - max(second[0], first[2])).total_seconds() <= bound, (second, first)
    # Small jobs started while each gang ran: the third worker kept taking them.
    for _, start, end in (first, second):
        assert any(start <= s_start <= end for _, s_start, _ in smalls), (start, end, smalls)
