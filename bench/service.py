"""What the benchmarks that start the service share: a temporary `TRAINDEPOT_HOME` with an
embedded Redis, the database of `TRAINDEPOT_DATABASE_URL` migrated, and an API key."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from traindepot.embedded import EmbeddedRedis
from traindepot.stack import migrate


@dataclass
class BenchHome:
    home: Path
    env: dict[str, str]  # for the service's processes: this home, this Redis, `settings`
    key: str  # an API key of the tenant asked for
    redis: EmbeddedRedis
    database_url: str


@contextmanager
def bench_home(
    tenant: str = "bench", settings: dict[str, str] | None = None
) -> Iterator[BenchHome]:
    """The home, its Redis (stopped at the end) and a key of `tenant`; `settings` are more
    `TRAINDEPOT_*` variables for the service."""
    from api import keyring
    from db.session import session_scope
    from traindepot.settings import Settings

    database_url = os.environ["TRAINDEPOT_DATABASE_URL"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        redis_server = EmbeddedRedis(home / "redis")
        try:
            env = {
                **os.environ,
                "TRAINDEPOT_HOME": str(home),
                "TRAINDEPOT_REDIS_URL": redis_server.url,
                "TRAINDEPOT_ALLOWED_PATHS": str(home),
                **(settings or {}),
            }
            migrate(env)
            with session_scope(database_url) as session:
                _, key = keyring.issue(
                    session=session,
                    settings=Settings(home=home, database_url=database_url),
                    tenant=tenant,
                )
            yield BenchHome(home, env, key, redis_server, database_url)
        finally:
            redis_server.stop()


def offline_env(work: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmark's stack, offline, one torch thread per training child,
    its home under `work`; `settings` are more variables (`TRAINDEPOT_QUEUES=...`)."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRAINDEPOT_HOME": str(work / "home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
        **settings,
    }


def submit_and_wait(
    client: httpx.Client, spec: dict[str, Any], *, timeout: float = 600, poll: float = 0.25
) -> dict[str, Any]:
    """Submit `spec`, poll `GET /jobs/{id}` every `poll` seconds until it ends, and return
    the job; a job that does not succeed within `timeout` fails the benchmark."""
    job: dict[str, Any] = client.post("/jobs", json=spec).raise_for_status().json()
    return wait_for_end(client, job["id"], timeout=timeout, poll=poll)


def wait_for_end(
    client: httpx.Client, job_id: str, *, timeout: float = 600, poll: float = 0.25
) -> dict[str, Any]:
    """Poll `GET /jobs/{job_id}` every `poll` seconds until the job ends and return it; a
    job that does not succeed within `timeout` fails the benchmark."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']}")
        time.sleep(poll)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
    return job


def spread(values: list[float], fmt: str = "{:.3f}", unit: str = "") -> str:
    """`median (min-max)` of a benchmark's repeats, as docs/benchmarks.md reports them:
    `spread([1.2, 0.8, 1.0], "{:.2f}", " s")` is `1.00 s (0.80-1.20)`."""
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return f"{fmt.format(statistics.median(values))}{unit} ({low}-{high})"
