"""Issue 28's workers (test_gangs.py, test_gang_faults.py): three worker processes of two
CPU slots each (gloo), each with a `TRAINDEPOT_HOME` of its own and, as root, a network
namespace of its own (tests/netns.py: a bridge, a veth pair per worker). They share
PostgreSQL and Redis (reached through forwarders on the bridge's address) and an artifact
store (a directory standing for a bucket), nothing else: the rendezvous and the ranks'
gloo traffic cross the bridge between namespaces.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.integration.conftest import Stack
from tests.integration.test_multirank import NO_DROPOUT
from tests.netns import Forwarder, Netns
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.stack import stop_process

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
    queue: str
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
            f"gang-{n}", queues=self.queue, args=("--slots", "2"), settings=settings, prefix=prefix
        )
        self.homes[proc.pid] = home
        self.procs.append(proc)
        return proc

    def registered(self, count: int) -> None:
        """`count` workers of 2 devices are live: a job of `count` nodes validates."""
        probe = self.spec("probe", nodes=count)
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

    def spec(
        self, name: str, *, nodes: int = 2, gpus: int = 2, **training_args: Any
    ) -> dict[str, Any]:
        """A job of `nodes` x `gpus` ranks on this gang's queue, a tiny GPT-2 without
        dropout, 2 examples per rank and step."""
        return tiny_spec(
            name=name,
            queue=self.queue,
            model={"from_config": {**TINY_GPT2, **NO_DROPOUT}},
            resources={"nodes": nodes, "gpus": gpus},
            training_args={"per_device_train_batch_size": 2, **training_args},
        )


@contextmanager
def gang_workers(stack: Stack, root: Path, queue: str) -> Iterator[Gang]:
    """Three gang workers of 2 CPU slots on `queue`, registered, for the block."""
    netns = Netns() if Netns.available() else None
    if netns is not None:
        netns.up()
    g = Gang(stack, root, root / "store", queue, netns)
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
