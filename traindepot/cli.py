"""The `traindepot` command line: the client commands (submit, wait, events, logs, download,
status, cancel, list), with the server commands (traindepot/cli_server.py) and the operators'
ones (keys, gc, webhooks) mounted beside them."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
import yaml
from rich.table import Table

from traindepot.cli_output import console, err, follow_events, print_api_error, show_outcome
from traindepot.statuses import JobStatus

if TYPE_CHECKING:
    from traindepot.client import Client

app = typer.Typer(
    help="traindepot: run Hugging Face Trainer jobs as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

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
    from api import cli_gc, cli_keys, webhook_sender
    from traindepot import cli_server, cli_sweep

    for command in cli_server.COMMANDS:
        app.command()(command)
    app.add_typer(cli_keys.app, name="keys")
    app.add_typer(cli_sweep.app, name="sweep")
    app.command("gc")(cli_gc.gc)
    app.command("webhooks")(webhook_sender.command)


_register_subcommands()


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
    """A client whose failures end the command with a message and a non-zero exit: 2 for a
    request the API refused as invalid (422) or an API that cannot be reached, 1 otherwise."""
    from traindepot.client import ApiError, Client

    try:
        with Client(url, key=_key(key)) as client:
            yield client
    except ApiError as exc:
        print_api_error(exc.status, exc.body)
        raise typer.Exit(2 if exc.status == 422 else 1) from exc
    except httpx.HTTPError as exc:
        err.print(f"cannot reach the traindepot API at {url}: {exc}", markup=False)
        raise typer.Exit(2) from exc


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, JSON or YAML ('-' for stdin).")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "--wait",
            help="Show live progress until the job ends; exit 0 only if it succeeded.",
        ),
    ] = False,
) -> None:
    """Submit a job spec; prints the job id. Exits 2 naming each field of an invalid spec."""
    body = _load_spec(spec)
    with _api(url, key) as client:
        job = client.submit(body)
        print(job["id"], flush=True)  # plain: scripts read it
        if follow:
            final = follow_events(client, job["id"])
            show_outcome(final)
    if follow and final["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def validate(
    spec: Annotated[Path, typer.Argument(help="Job spec, JSON or YAML ('-' for stdin).")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Validate a spec as `submit` would (no job is created) and print the effective
    TrainingArguments the worker will build. Exits 2 naming each invalid field."""
    body = _load_spec(spec)
    with _api(url, key) as client:
        checked = client.validate(body)
    table = Table("TrainingArguments", "value")
    for name, value in sorted((checked.get("training_args") or {}).items()):
        table.add_row(name, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
    console.print("[green]the spec is valid[/]")


JobIdArg = Annotated[str, typer.Argument(help="The job's id.")]


@app.command()
def wait(job_id: JobIdArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Wait for a job to end (following its events); exit 0 only if it succeeded."""
    with _api(url, key) as client:
        final = follow_events(client, job_id)
        show_outcome(final)
    if final["status"] != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def events(job_id: JobIdArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None) -> None:
    """Print a job's events, one JSON object a line (`event`, `id`, `data`), until its end."""
    with _api(url, key) as client:
        for event, event_id, data in client.events(job_id):
            print(json.dumps({"event": event, "id": event_id, "data": data}), flush=True)


@app.command()
def logs(
    job_id: JobIdArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    tail: Annotated[int, typer.Option(help="How many last lines to start with.")] = 100,
) -> None:
    """Print a job's training log (its last lines; with --follow, until the job ends)."""
    with _api(url, key) as client:
        for chunk in client.logs(job_id, tail=tail, follow=follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


@app.command()
def download(
    job_id: JobIdArg,
    directory: Annotated[
        Path | None, typer.Argument(help="Where to unpack the model (default: ./<job id>).")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Download a job's final model (`GET /jobs/{id}/model.tar`) and unpack it."""
    import tarfile

    from traindepot.client import ApiError

    target = directory or Path(job_id)
    with _api(url, key) as client:
        try:
            with client.model_tar(job_id) as response:
                target.mkdir(parents=True, exist_ok=True)
                stream = io.BufferedReader(_ResponseReader(response.iter_bytes()))
                with tarfile.open(fileobj=stream, mode="r|") as archive:
                    # `data` refuses absolute paths, links out of the target and devices.
                    archive.extractall(target, filter="data")
        except ApiError as exc:
            if exc.status != 404:
                raise
            print_api_error(exc.status, exc.body)
            err.print(
                f"job {job_id} has no model to download: an unknown job, one that has not "
                "succeeded, or a server without model downloads",
                markup=False,
            )
            raise typer.Exit(1) from exc
        except (tarfile.TarError, OSError) as exc:
            err.print(f"cannot unpack the model into {target}: {exc}", markup=False)
            raise typer.Exit(1) from exc
    console.print(f"model of {job_id} unpacked into {target}")


class _ResponseReader(io.RawIOBase):
    """A file object over a streamed response body, for `tarfile`'s stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, into: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(into), len(self._buffer))
        into[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


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


def line_buffered_output() -> None:
    """Every line this command (and any Python it starts) prints reaches a file, a pipe or
    `docker logs` as it is printed: Python block-buffers stdout that is not a terminal."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the API, worker and sender it starts
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


def main() -> None:
    from pydantic import ValidationError

    from traindepot.settings import Settings, SettingsError, describe_invalid

    line_buffered_output()
    try:
        app()
    except SettingsError as exc:  # a setting the command needs: a message, not a trace
        print(f"traindepot: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        print(f"traindepot: {describe_invalid(exc)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
