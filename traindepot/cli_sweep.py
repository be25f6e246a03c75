"""`traindepot sweep submit|status|best|cancel`: hyperparameter sweeps from the command line
(docs/architecture.md, "Sweeps"). Mounted by traindepot/cli.py, whose client, key and error
handling it uses: a refused sweep exits 2 naming each path, as `submit` does for a spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from traindepot.cli_output import err

app = typer.Typer(help="Hyperparameter sweeps: trials are jobs, searched with Optuna.")
console = Console()

SweepIdArg = Annotated[str, typer.Argument(help="The sweep's id.")]
# traindepot/cli.py's options (not imported from it: it imports this module).
UrlOpt = Annotated[str, typer.Option(envvar="TRAINDEPOT_URL", help="The API's base URL.")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="TRAINDEPOT_API_KEY", show_default=False, help="API key."),
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _value(value: Any) -> str:
    return "-" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


@app.command()
def submit(
    sweep: Annotated[Path, typer.Argument(help="Sweep, JSON or YAML ('-' for stdin).")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Submit a sweep; prints its id. Exits 2 naming each path of an invalid one."""
    from traindepot import cli

    body = cli._load_spec(sweep)
    with cli._api(url, key) as client:
        print(client.submit_sweep(body)["id"], flush=True)  # plain: scripts read it


@app.command()
def status(
    sweep_id: SweepIdArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The sweep's status and its trials: parameters, state, job, objective."""
    from traindepot import cli

    with cli._api(url, key) as client:
        doc = client.get_sweep(sweep_id)
    params = list(doc["spec"]["search_space"])
    table = Table("trial", "state", "job", "status", *params, doc["spec"]["objective"]["metric"])
    for trial in doc["trials"]:
        table.add_row(
            str(trial["number"]),
            trial["state"],
            trial["job_id"] or "-",
            trial["job_status"] or "-",
            *(_value(trial["params"].get(p)) for p in params),
            _value(trial["value"]),
        )
    console.print(f"sweep {doc['id']} {doc['name']}: {doc['status']}", highlight=False)
    console.print(table)
    best = doc.get("best")
    if best is not None:
        console.print(f"best: trial {best['number']} = {_value(best['value'])}", highlight=False)


@app.command()
def best(
    sweep_id: SweepIdArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """The best trial so far as JSON (number, job, value, parameters, model); exits 1 while
    no trial has completed."""
    from traindepot import cli

    with cli._api(url, key) as client:
        doc = client.get_sweep(sweep_id)
    if doc.get("best") is None:
        err.print(f"sweep {sweep_id} has no completed trial yet")
        raise typer.Exit(1)
    print(json.dumps(doc["best"]), flush=True)


@app.command()
def cancel(
    sweep_id: SweepIdArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
) -> None:
    """Stop the sweep: no new trial; queued trials cancelled, running ones stopped."""
    from traindepot import cli

    with cli._api(url, key) as client:
        doc = client.cancel_sweep(sweep_id)
    console.print(f"{doc['id']} {doc['status']}", highlight=False)
