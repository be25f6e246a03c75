"""What the `traindepot` client commands print (traindepot/cli.py): an API error as lines
a person reads, a job's live progress bar, and its TrainOutput or its error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from traindepot.client import Client

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def print_api_error(status: int, body: Any) -> None:
    """An API error as lines a person reads: each problem of a 422 as `field.path: message`."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if status == 422 and isinstance(detail, list):
        err.print("[red]the spec is invalid:[/]")
        for problem in detail:
            if isinstance(problem, dict):
                where = ".".join(str(p) for p in problem.get("loc") or []) or "(spec)"
                err.print(f"  {where}: {problem.get('msg', '')}", markup=False, highlight=False)
            else:
                err.print(f"  {problem}", markup=False, highlight=False)
        return
    what = body.get("error", "") if isinstance(body, dict) else ""
    err.print(f"HTTP {status} {what}: {detail}", markup=False, highlight=False)


def follow_events(client: Client, job_id: str) -> dict[str, Any]:
    """A live progress bar (step, loss, ETA) from the job's event stream until its end;
    returns the job as it ended."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("queued", total=None, loss="-", eta="-")

        def show(progress: dict[str, Any]) -> None:
            loss, eta = progress.get("loss"), progress.get("eta_seconds")
            update: dict[str, Any] = {}
            if isinstance(progress.get("max_steps"), int):
                update["total"] = progress["max_steps"]
            if isinstance(progress.get("global_step"), int):
                update["completed"] = progress["global_step"]
            if isinstance(loss, int | float):
                update["loss"] = f"{loss:.4f}"
            if isinstance(eta, int | float):
                update["eta"] = f"{eta:.0f}s"
            bar.update(task, **update)

        for event, _, data in client.events(job_id):
            if not isinstance(data, dict):
                continue
            if event == "status":
                bar.update(task, description=str(data.get("status")))
            elif event == "progress":
                show(data)
            elif event in ("train", "eval", "summary", "restart"):
                if isinstance(data.get("progress"), dict):
                    show(data["progress"])
                values = data.get("values") or {}
                if event == "train" and isinstance(data.get("step"), int):
                    bar.update(task, completed=data["step"])
                if event == "train" and isinstance(values.get("loss"), int | float):
                    bar.update(task, loss=f"{values['loss']:.4f}")
            elif event == "end":
                break
        # The job as it ended: its last progress snapshot (a short job's stream may have
        # carried none), and no ETA.
        final = client.get(job_id)
        show(final.get("progress") or {})
        bar.update(task, description=str(final["status"]), eta="-")
    return final


def show_outcome(job: dict[str, Any]) -> None:
    """The TrainOutput as a table, or the error with its traceback."""
    result, error = job.get("result"), job.get("error")
    console.print(f"job {job['id']} [bold]{job['status']}[/]")
    if result:
        table = Table("TrainOutput", "value")
        table.add_row("global_step", str(result.get("global_step")))
        table.add_row("training_loss", str(result.get("training_loss")))
        for name, value in (result.get("metrics") or {}).items():
            table.add_row(f"metrics.{name}", str(value))
        console.print(table)
    if error:
        err.print(
            f"{error.get('type')} ({error.get('reason')}): {error.get('message')}",
            markup=False,
            highlight=False,
        )
        if error.get("traceback"):
            err.print(error["traceback"], markup=False, highlight=False)
