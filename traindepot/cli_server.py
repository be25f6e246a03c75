"""The server commands of the CLI (`traindepot serve`, `api`, `worker`, `migrate`, `demo`):
the processes of a deployment, started against the configured database and Redis or an
embedded stack. traindepot/cli.py mounts them beside the client commands."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from traindepot.statuses import JobStatus

if TYPE_CHECKING:
    from traindepot.stack import Stack

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]


def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Run the API and one worker; embedded PostgreSQL and Redis unless configured."""
    from traindepot.stack import running_stack

    # SIGTERM (docker stop, systemd) unwinds like Ctrl-C: the worker and the embedded
    # servers are stopped on the way out, never left orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with running_stack(host=host, port=port) as stack:
        console.print(f"traindepot is up at [bold]{stack.url}[/] (docs: {stack.url}/docs)")
        _show_admin_key(stack)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping…")


# How long uvicorn's parent waits for an API process to answer its health check before it
# kills it and starts another. A starting process imports transformers and torch, whose
# native initialisation holds the GIL for seconds of CPU; on a loaded machine uvicorn's 5 s
# default killed every process before it answered and started another, forever (49 in 5
# minutes at load 11 on 2 cores, bench/first_submit_http.py, docs/benchmarks.md).
API_HEALTHCHECK_SECONDS = 120


def _default_api_workers() -> int:
    """One API process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def api(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default="one per core",
            help="API processes. Each opens at most TRAINDEPOT_DB_POOL_SIZE +"
            " TRAINDEPOT_DB_MAX_OVERFLOW + TRAINDEPOT_API_READ_POOL_SIZE database connections,"
            " and one more to follow job changes.",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option(help="Log a line per request (costs throughput under load).")
    ] = False,
) -> None:
    """Run the API alone against the configured database and Redis."""
    import uvicorn

    from traindepot.settings import get_settings

    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    processes = workers or _default_api_workers()
    err.print(
        f"{processes} API process(es) x {settings.api_connections} database connections"
        f" = {processes * settings.api_connections} at most (PostgreSQL's max_connections"
        " must hold them and the workers')"
    )
    if processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # GET /metrics sums the request latencies of every process (api/telemetry.py).
        metrics_dir = settings.home / "prometheus-api"
        if metrics_dir.exists():
            for stale in metrics_dir.glob("*.db"):
                stale.unlink()
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "api.app:app",
        host=host,
        port=port,
        workers=processes,
        access_log=access_log,
        timeout_worker_healthcheck=API_HEALTHCHECK_SECONDS,
    )


def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to take jobs from.")
    ] = "default",
    gpus: Annotated[
        str | None,
        typer.Option(help="Comma-separated CUDA device ids this worker owns (default: all)."),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="CPU-only: how many job slots this worker owns."),
    ] = None,
) -> None:
    """Run one worker against the configured database and Redis: as many jobs at once as
    its devices allow (a job takes `resources.gpus` of them)."""
    from traindepot.settings import get_settings

    if gpus is not None and slots is not None:
        raise typer.BadParameter("give --gpus or --slots, not both", param_hint="--slots")
    gpu_ids = [g.strip() for g in (gpus or "").split(",") if g.strip()]
    if gpus is not None and (not gpu_ids or not all(g.isdigit() for g in gpu_ids)):
        raise typer.BadParameter(
            f"{gpus!r} is not a list of device ids like 0,1,2", param_hint="--gpus"
        )
    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    from worker import devices, network

    network.advertised(settings)  # a bad interface stops the worker here, not a gang later
    from worker.celery_app import app as celery_app

    pool = devices.configured(gpu_ids or settings.worker_gpus, slots or settings.worker_slots)
    if pool is None and not Path("/dev/nvidiactl").exists():
        pool = devices.probed(0)  # no NVIDIA driver: one CPU slot, no probe needed
    if pool is None:
        from worker.capabilities import probe_devices

        pool = devices.probed(int(probe_devices().get("gpus", 0)))
    devices.owned.set(pool)
    # One device: the solo pool runs the task in this process. Several: one task thread per
    # device, each claiming what fits the free ones. Either way each job's training runs in
    # a child process of its own (worker/supervisor.py).
    concurrency = ["--pool", "solo"] if pool.total == 1 else ["--pool", "threads"]
    celery_app.worker_main(
        [
            "worker",
            *concurrency,
            "--concurrency",
            str(pool.total),
            "--queues",
            queues,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


def migrate() -> None:
    """Apply database migrations."""
    from traindepot.settings import get_settings
    from traindepot.stack import migrate as apply_migrations

    get_settings().require_database_url()
    apply_migrations(dict(os.environ))
    console.print("database is up to date")


def demo(port: PortOpt = 0) -> None:
    """Start the stack, run a tiny offline training job, print its TrainOutput."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from traindepot.client import Client
    from traindepot.demo import demo_spec, follow
    from traindepot.embedded import free_port
    from traindepot.stack import running_stack

    with running_stack(host="127.0.0.1", port=port or free_port()) as stack:
        console.print(f"traindepot is up at [bold]{stack.url}[/] (API docs: {stack.url}/docs)")
        _show_admin_key(stack)
        with Client(stack.url, key=stack.admin_key, timeout=120) as client:
            job = client.submit(demo_spec())
            console.print(f"submitted job [bold]{job['id']}[/] ({job['name']})")
            final = follow(client, job["id"], console)
        if final["status"] != JobStatus.SUCCEEDED:
            err.print(f"[red]job {final['status']}[/]")
            err.print_json(data=final.get("error"))
            raise typer.Exit(1)
        console.print("TrainOutput:")
        console.print_json(data=final["result"])
        console.print(
            f"job: {stack.url}/jobs/{final['id']}   files: {stack.home / 'jobs' / final['id']}"
        )


def _show_admin_key(stack: Stack) -> None:
    """Where the admin key is. The key itself is printed only to a terminal, when it was
    just created: a log file, a pipe, journald or `docker logs` keeps what it is given, for
    whoever can read logs, so there only the key's file (mode 0600) is named (README,
    "The admin key")."""
    where = f"{stack.admin_key_file} (readable by its owner only)"
    if stack.admin_key_is_new and console.is_terminal:
        console.print(f"admin API key (shown once; kept for this machine's CLI in {where}):")
        console.print(f"  {stack.admin_key}", markup=False, highlight=False)
    elif stack.admin_key_is_new:
        console.print(f"a new admin API key is in {where}; it is not written to this log")
    else:
        console.print(f"admin API key: the one kept in {where}")


COMMANDS: list[Callable[..., Any]] = [serve, api, worker, migrate, demo]
