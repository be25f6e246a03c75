"""The `traindepot` command line."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from traindepot.statuses import JobStatus

if TYPE_CHECKING:
    from traindepot.client import Client
    from traindepot.stack import Stack

app = typer.Typer(
    help="traindepot: run Hugging Face Trainer jobs as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]
DEFAULT_URL = "http://127.0.0.1:8000"
UrlOpt = Annotated[str, typer.Option(envvar="TRAINDEPOT_URL", help="The API's base URL.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="TRAINDEPOT_API_KEY",
        show_default=False,
        help="API key (default: the admin key `serve`/`demo` keep in TRAINDEPOT_HOME).",
    ),
]


def _register_subcommands() -> None:
    from api import cli_gc, cli_keys

    app.add_typer(cli_keys.app, name="keys")
    app.command("gc")(cli_gc.gc)


_register_subcommands()


@app.command()
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


@app.command()
def api(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Run the API alone against the configured database and Redis."""
    import uvicorn

    from traindepot.settings import get_settings

    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    uvicorn.run("api.app:app", host=host, port=port)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues to take jobs from.")
    ] = "default",
) -> None:
    """Run one worker (one job at a time) against the configured database and Redis."""
    from traindepot.settings import get_settings

    settings = get_settings()
    settings.require_database_url()
    settings.require_redis_url()
    from worker.celery_app import app as celery_app

    # The solo pool runs the task in this process; each job's training runs in a child
    # process of its own (worker/supervisor.py). One worker per GPU.
    celery_app.worker_main(
        [
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--queues",
            queues,
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def migrate() -> None:
    """Apply database migrations."""
    from traindepot.settings import get_settings
    from traindepot.stack import migrate as apply_migrations

    get_settings().require_database_url()
    apply_migrations(dict(os.environ))
    console.print("database is up to date")


@app.command()
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
    if stack.admin_key_is_new:
        console.print(
            f"admin API key (shown once; kept for this machine's CLI in {stack.admin_key_file}):"
            f"\n  {stack.admin_key}"
        )
    else:
        console.print(f"admin API key: the one kept in {stack.admin_key_file}")


def _key(key: str | None) -> str | None:
    """--key / TRAINDEPOT_API_KEY, else the admin key kept under TRAINDEPOT_HOME."""
    if key:
        return key
    from traindepot import apikeys
    from traindepot.settings import get_settings

    return apikeys.local_admin_key(get_settings())


def _load_spec(path: Path) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        err.print(f"[red]cannot read {path}: {exc.strerror}[/]")
        raise typer.Exit(2) from exc
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        err.print(f"[red]{path} is not valid {kind}: {exc}[/]")
        raise typer.Exit(2) from exc
    if not isinstance(data, dict):
        err.print(f"[red]{path}: a job spec is an object[/]")
        raise typer.Exit(2)
    return data


@contextmanager
def _api(url: str, key: str | None) -> Iterator[Client]:
    """A client whose failures end the command with a message and a non-zero exit."""
    from traindepot.client import ApiError, Client

    try:
        with Client(url, key=_key(key)) as client:
            yield client
    except ApiError as exc:
        err.print(f"[red]HTTP {exc.status}[/]")
        err.print_json(data=exc.body)
        raise typer.Exit(1) from exc
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the traindepot API at {url}: {exc}[/]")
        raise typer.Exit(2) from exc


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, JSON or YAML ('-' for stdin).")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a job spec; prints the job id."""
    from traindepot.demo import follow

    body = _load_spec(spec)
    with _api(url, key) as client:
        job = client.submit(body)
        console.print(job["id"])
        if wait:
            final = follow(client, job["id"], console)
            console.print_json(
                data={"status": final["status"], "result": final["result"], "error": final["error"]}
            )
            if final["status"] != JobStatus.SUCCEEDED:
                raise typer.Exit(1)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Print a job (status, progress, result or error)."""
    with _api(url, key) as client:
        console.print_json(data=client.get(job_id))


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Cancel a job: at once if queued, at the next step (with a checkpoint) if running."""
    with _api(url, key) as client:
        job = client.cancel(job_id)
        console.print(f"{job['id']} {job['status']}")


@app.command("list")
def list_jobs(
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    job_status: Annotated[
        str | None, typer.Option("--status", help="Only jobs with this status.")
    ] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if job_status:
        params["status"] = job_status
    with _api(url, key) as client:
        page = client.list(**params)
    table = Table("id", "name", "status", "step", "loss", "created")
    for job in page["items"]:
        progress = job.get("progress") or {}
        loss = progress.get("loss")
        table.add_row(
            job["id"],
            job["name"],
            job["status"],
            f"{progress.get('global_step', '-')}/{progress.get('max_steps', '-')}",
            f"{loss:.4f}" if isinstance(loss, float) else "-",
            job["created_at"],
        )
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
