"""`traindepot gc` (mounted by traindepot/cli.py): retention for operators, straight on the
database and the jobs directory (the same `TRAINDEPOT_DATABASE_URL` and `TRAINDEPOT_HOME`
as the API and the workers). See docs/architecture.md, "Artifacts and retention".

Finished jobs (succeeded, failed, cancelled) that ended more than `--older-than` ago:

- by default, everything goes, as with `DELETE /jobs/{id}`: the files, the history
  (`job_metrics`, `job_attempts`) and the job row;
- with `--keep-models`, only the checkpoints go (`output/`): the final model, the log, the
  row and its history stay, since the model card and the metrics describe the model that is
  kept; `disk_bytes` is measured again.

With an artifact store (`TRAINDEPOT_ARTIFACTS_URL`) the same goes for the job's objects
there (and `freed_bytes` counts them); its local directory, if this machine has one, goes too.

Queued and running jobs are never touched. The prepared datasets that sweeps cached
(traindepot/dataset_cache.py) and nothing used for as long go too.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from traindepot import artifacts, dataset_cache
from traindepot.settings import Settings
from traindepot.store import open_store

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^(\d+)([smhdw])$")


def parse_age(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w`, `45s`."""
    match = _AGE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an age: a number and a unit of s, m, h, d, w (`30d`)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class Collected:
    job_id: uuid.UUID
    action: str  # "deleted" | "checkpoints removed"
    freed_bytes: int


def collect(
    *,
    session: Session,
    settings: Settings,
    cutoff: datetime,
    keep_models: bool,
    dry_run: bool = False,
) -> list[Collected]:
    """Apply the retention rule (module docstring) to the jobs that finished before
    `cutoff`. Each job's rows are committed as soon as its files are gone."""
    from api.routes.artifacts import remove_everywhere
    from db import jobs

    store = open_store(settings)
    done: list[Collected] = []
    ids = [job.id for job in jobs.finished_before(session=session, cutoff=cutoff)]
    for job_id in ids:
        job_dir = settings.job_dir(job_id)
        before = artifacts.disk_usage(job_dir) + (store.used_bytes(job_id) if store else 0)
        if keep_models:
            freed = artifacts.disk_usage(job_dir / artifacts.OUTPUT_DIR)
            if store is not None:
                freed += store.used_bytes(job_id, artifacts.OUTPUT_DIR)
            if not dry_run and freed:
                if store is not None:
                    store.remove(job_id, artifacts.OUTPUT_DIR)
                artifacts.remove_checkpoints(job_dir)
                jobs.set_disk_bytes(
                    session=session, job_id=job_id, disk_bytes=artifacts.disk_usage(job_dir)
                )
                session.commit()
            if freed:
                done.append(Collected(job_id, "checkpoints removed", freed))
            continue
        if not dry_run:
            remove_everywhere(settings, job_id)
            jobs.delete_finished(session=session, job_id=job_id)
            session.commit()
        done.append(Collected(job_id, "deleted", before))
    return done


def gc(
    older_than: Annotated[
        str, typer.Option(help="Finished longer ago than this: `30d`, `12h`, `2w`.")
    ] = "30d",
    keep_models: Annotated[
        bool,
        typer.Option(
            help="Remove only checkpoints; keep the final model, the job and its history."
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Say what would go; remove nothing.")] = False,
) -> None:
    """Remove old finished jobs: their files, history and rows (or, with --keep-models,
    their checkpoints only). Queued and running jobs are never touched."""
    from db.session import session_scope
    from traindepot.settings import get_settings

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        err.print(f"[red]--older-than: {exc}[/]")
        raise typer.Exit(2) from None
    settings = get_settings()
    if not settings.database_url:
        err.print("[red]TRAINDEPOT_DATABASE_URL is not set: gc works on the database[/]")
        raise typer.Exit(2)
    cutoff = datetime.now(UTC) - age
    with session_scope(settings.database_url) as session:
        done = collect(
            session=session,
            settings=settings,
            cutoff=cutoff,
            keep_models=keep_models,
            dry_run=dry_run,
        )
    for item in done:
        console.print(f"{item.job_id} {item.action} ({item.freed_bytes} bytes)")
    cached = dataset_cache.unused_since(dataset_cache.cache_dir(settings.home), cutoff.timestamp())
    for entry, size in cached:
        if not dry_run:
            shutil.rmtree(entry, ignore_errors=True)
        console.print(f"prepared data {entry.name} removed ({size} bytes)")
    verb = "would free" if dry_run else "freed"
    freed = sum(i.freed_bytes for i in done) + sum(size for _, size in cached)
    err.print(f"{len(done)} job(s), {len(cached)} prepared dataset(s); {verb} {freed} bytes")
