"""The `traindepot` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

app = typer.Typer(
    help="traindepot: run Hugging Face Trainer jobs as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err = Console(stderr=True)

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on.")]
UrlOpt = Annotated[str, typer.Option(envvar="TRAINDEPOT_URL", help="The API's base URL.")]


@app.command()
def serve(host: HostOpt = "127.0.0.1", port: PortOpt = 8000) -> None:
    """Run the API and one worker; embedded PostgreSQL and Redis unless configured."""
    from traindepot.stack import running_stack

    with running_stack(host=host, port=port) as stack:
        console.print(f"traindepot is up at [bold]{stack.url}[/] (docs: {stack.url}/docs)")
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
    from db.migrate import upgrade
    from traindepot.settings import get_settings

    upgrade(get_settings().require_database_url())
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
        with Client(stack.url) as client:
            job = client.submit(demo_spec())
            console.print(f"submitted job [bold]{job['id']}[/] ({job['name']})")
            final = follow(client, job["id"], console)
        if final["status"] != "succeeded":
            err.print(f"[red]job {final['status']}[/]")
            err.print_json(data=final.get("error"))
            raise typer.Exit(1)
        console.print("TrainOutput:")
        console.print_json(data=final["result"])
        console.print(
            f"job: {stack.url}/jobs/{final['id']}   files: {stack.home / 'jobs' / final['id']}"
        )


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


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, JSON or YAML ('-' for stdin).")],
    url: UrlOpt = "http://127.0.0.1:8000",
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
) -> None:
    """Submit a job spec."""
    from traindepot.client import ApiError, Client
    from traindepot.demo import follow

    body = _load_spec(spec)
    with Client(url) as client:
        try:
            job = client.submit(body)
        except ApiError as exc:
            err.print(f"[red]rejected (HTTP {exc.status})[/]")
            err.print_json(data=exc.body)
            raise typer.Exit(1) from exc
        console.print(job["id"])
        if wait:
            final = follow(client, job["id"], console)
            console.print_json(
                data={"status": final["status"], "result": final["result"], "error": final["error"]}
            )
            if final["status"] != "succeeded":
                raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
