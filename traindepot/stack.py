"""The whole service in one process tree: database and Redis (configured or embedded),
migrations, one worker process and the API. Used by `traindepot serve` and `demo`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from traindepot import lifetime
from traindepot.embedded import EmbeddedPostgres, EmbeddedRedis
from traindepot.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stack:
    url: str
    database_url: str
    redis_url: str
    home: Path
    admin_key: str  # the first admin key, kept in `admin_key_file` for the local CLI
    admin_key_is_new: bool  # created by this start: print it (once)
    admin_key_file: Path


@contextmanager
def backing_services(settings: Settings) -> Iterator[tuple[str, str]]:
    """The configured database and Redis, or embedded ones that stop on exit."""
    with ExitStack() as stack:
        database_url = settings.database_url
        if not database_url:
            pg = EmbeddedPostgres(settings.home / "postgres")
            stack.callback(pg.stop)
            database_url = pg.url
        redis_url = settings.redis_url
        if not redis_url:
            rd = EmbeddedRedis(settings.home / "redis")
            stack.callback(rd.stop)
            redis_url = rd.url
        yield database_url, redis_url


# The stack's processes (API, worker, webhook sender) get SIGTERM, their graceful stop, when
# the process that started them dies, even by SIGKILL: a killed `serve`, `demo` or test run
# leaves none behind (the embedded PostgreSQL and Redis daemonize: `stop` ends them).
def ends_with_us() -> Callable[[], None]:
    return lifetime.dying_with_this_process(signal.SIGTERM)


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    return start_command(["worker"], env, log_path)


def start_webhook_sender(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`traindepot webhooks`: the process that delivers the outbox's events."""
    return start_command(["webhooks"], env, log_path)


def start_command(
    args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`traindepot ARGS` in a process of its own, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "traindepot.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=ends_with_us(),
        )


def start_api(
    env: dict[str, str], log_path: Path, *, port: int, host: str = "127.0.0.1"
) -> tuple[subprocess.Popen[bytes], str]:
    """The API in a process of its own (uvicorn); returns it and its base URL."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:app", "--host", host, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=ends_with_us(),
        )
    return process, f"http://{host}:{port}"


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(
    url: str,
    timeout: float = 60,
    *,
    path: str = "/healthz",
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until `url + path` answers 200; fail early if `process` (the server) exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"no answer at {url}{path}")
        time.sleep(0.1)


def migrate(env: dict[str, str]) -> None:
    """Apply the database migrations to `TRAINDEPOT_DATABASE_URL` of `env`, in a process of
    their own (`python -m db.migrate`), as every service of the stack runs: this package
    never imports `db` (the dependency runs one way, db -> traindepot)."""
    subprocess.run([sys.executable, "-m", "db.migrate"], env=env, check=True)


@contextmanager
def running_stack(*, host: str, port: int, worker: bool = True) -> Iterator[Stack]:
    settings = get_settings()
    with backing_services(settings) as (database_url, redis_url), ExitStack() as stack:
        os.environ["TRAINDEPOT_DATABASE_URL"] = database_url
        os.environ["TRAINDEPOT_REDIS_URL"] = redis_url
        get_settings.cache_clear()
        migrate(dict(os.environ))
        from api import keyring  # the stack starts the API; its key store comes with it

        admin_key, new = keyring.ensure_local_admin_key(settings, database_url=database_url)
        if worker:
            proc = start_worker(dict(os.environ), settings.home / "logs" / "worker.log")
            stack.callback(stop_process, proc)
        sender = start_webhook_sender(dict(os.environ), settings.home / "logs" / "webhooks.log")
        stack.callback(stop_process, sender)
        config = uvicorn.Config("api.app:app", host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()

        def stop_api() -> None:
            server.should_exit = True
            thread.join(10)

        stack.callback(stop_api)
        url = f"http://{host}:{port}"
        # Ready, not just up: the validator's warm-up (importing transformers) is done, so
        # the first submit does not wait for it.
        wait_until_up(url, timeout=300, path="/readyz")
        yield Stack(
            url=url,
            database_url=database_url,
            redis_url=redis_url,
            home=settings.home,
            admin_key=admin_key,
            admin_key_is_new=new,
            admin_key_file=settings.admin_key_file,
        )
