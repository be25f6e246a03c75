"""Issue 28's workers (test_gangs.py, test_gang_faults.py): three worker processes of two
CPU slots each (gloo), each with a `TRAINDEPOT_HOME` of its own and, as root, a network
namespace of its own (tests/netns.py: a bridge, a veth pair per worker). They share
PostgreSQL, Redis and an artifact store, a bucket of a real S3 API over HTTP (moto's
server, tests/moto_server.py), all reached through forwarders on the bridge's address:
nothing else. The rendezvous, the ranks' gloo traffic and every checkpoint a new node
resumes from cross the network.
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
import pytest

from tests.integration.conftest import Stack
from tests.integration.test_multirank import NO_DROPOUT
from tests.moto_server import Moto
from tests.netns import Forwarder, Netns
from tests.specs import TINY_GPT2, tiny_spec
from traindepot.stack import stop_process
from traindepot.store import ArtifactStore, store_at

HOLD_SECONDS = 3.0
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Gang:
    """The gang test's workers: each started with a home of its own and, as root, in a network
    namespace of its own (tests/netns.py), which reaches PostgreSQL and Redis through
    forwarders on the bridge's address and the other workers at their own addresses: the
    rendezvous and the ranks' gloo traffic cross the bridge, never loopback."""

    stack: Stack
    root: Path
    queue: str
    moto: Moto
    netns: Netns | None = None
    warm: bool = True
    forwarders: dict[int, Forwarder] = field(default_factory=dict)
    homes: dict[int, Path] = field(default_factory=dict)  # worker pid -> its home
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.homes)
        home = self.root / f"home-{n}"
        home.mkdir(parents=True)
        settings = {
            "TRAINDEPOT_HOME": str(home),
            "TRAINDEPOT_ARTIFACTS_URL": self.store_url,
            **S3_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.moto.url,
            "TRAINDEPOT_GANG_HOLD_SECONDS": str(HOLD_SECONDS),
            "TRAINDEPOT_TENANT_BUSY_RETRY_SECONDS": "1",
            # A worker's prepared process serves 1-rank jobs only (ranks start cold).
            "TRAINDEPOT_WARM_START": "true" if self.warm else "false",
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
                "AWS_ENDPOINT_URL": self.netns.through(self.moto.url, self.forwarders),
                # Its address, and its ranks' gloo traffic, on that interface.
                "TRAINDEPOT_ADVERTISE_INTERFACE": self.netns.ifname(ns),
            }
        proc = self.stack.start_worker(
            f"gang-{n}", queues=self.queue, args=("--slots", "2"), settings=settings, prefix=prefix
        )
        self.homes[proc.pid] = home
        self.procs.append(proc)
        return proc

    @property
    def store_url(self) -> str:
        return f"s3://{self.queue}-store/depot"

    def store(self) -> ArtifactStore:
        """The bucket as this test process reads it (on loopback)."""
        return store_at(self.store_url)

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
def gang_workers(stack: Stack, root: Path, queue: str, *, warm: bool = True) -> Iterator[Gang]:
    """Three gang workers of 2 CPU slots on `queue`, registered, for the block; `warm`:
    with a prepared process each (only 1-rank jobs use it)."""
    netns = Netns() if Netns.available() else None
    if netns is not None:
        netns.up()
    moto = Moto()
    moto.start()
    patch = pytest.MonkeyPatch()  # this process reads the bucket too
    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": moto.url}.items():
        patch.setenv(name, value)
    g = Gang(stack, root, queue, moto, netns, warm)
    g.store().fs.mkdir(f"{queue}-store")
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
        moto.stop()
        patch.undo()


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
