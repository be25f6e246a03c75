"""What `GET /metrics` reports about jobs, read from the `jobs` table at scrape time.

Every API process computes the same values from the same rows, so these are correct however
many API processes there are and whichever one Prometheus scrapes (README, "Operating").
Each query is one statement; the histograms are computed in SQL as
cumulative bucket counts, so no row leaves the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from db import gangs
from traindepot.statuses import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus

# Seconds: from a second to a day, for queue waits and training runs alike.
BUCKETS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400,
)  # fmt: skip


@dataclass
class Histogram:
    """Cumulative counts per upper bound (`BUCKETS`), the total count and the sum."""

    buckets: list[int]
    count: int
    sum: float


@dataclass
class RunningJob:
    id: str
    name: str
    tenant: str
    queue: str
    progress: dict[str, Any]


@dataclass
class JobStats:
    by_status: list[tuple[str, str, str, int]] = field(
        default_factory=list
    )  # tenant, queue, status, n
    queued: list[tuple[str, int, float]] = field(default_factory=list)  # queue, depth, oldest age s
    queue_wait: dict[str, Histogram] = field(default_factory=dict)  # by queue
    duration: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # by queue, status
    running: list[RunningJob] = field(default_factory=list)
    points_written: int = 0
    gang_held: dict[str, int] = field(default_factory=dict)  # queue -> devices (db/gangs.py)


def _histograms(session: Session, seconds: str, where: str, by: Sequence[str]) -> list[Any]:
    """Rows of (*by, bucket counts..., count, sum) of `seconds` over the jobs `where`."""
    keys = ", ".join(by)
    counts = ", ".join(f"count(*) FILTER (WHERE s <= {float(b)})" for b in BUCKETS)
    return list(
        session.execute(
            text(
                f"SELECT {keys}, {counts}, count(*), coalesce(sum(s), 0) FROM ("
                f" SELECT {keys}, extract(epoch FROM {seconds})::float8 AS s"
                f" FROM jobs WHERE {where}) AS t GROUP BY {keys}"
            )
        )
    )


def _histogram(row: Sequence[Any], skip: int) -> Histogram:
    values = list(row[skip:])
    return Histogram(
        buckets=[int(v) for v in values[: len(BUCKETS)]],
        count=int(values[len(BUCKETS)]),
        sum=float(values[len(BUCKETS) + 1]),
    )


def snapshot(session: Session) -> JobStats:
    stats = JobStats()
    stats.gang_held = gangs.held_devices(session=session)
    stats.by_status = [
        (str(t), str(q), str(s), int(n))
        for t, q, s, n in session.execute(
            text("SELECT tenant, queue, status, count(*) FROM jobs GROUP BY tenant, queue, status")
        )
    ]
    stats.queued = [
        (str(q), int(n), float(age or 0.0))
        for q, n, age in session.execute(
            text(
                "SELECT queue, count(*), extract(epoch FROM now() - min(created_at))::float8"
                " FROM jobs WHERE status = :queued GROUP BY queue"
            ),
            {"queued": str(JobStatus.QUEUED)},
        )
    ]
    # Time in queue: from submission to the first claim, of every job that started.
    for row in _histograms(
        session, "started_at - created_at", "started_at IS NOT NULL", ("queue",)
    ):
        stats.queue_wait[str(row[0])] = _histogram(row, 1)
    terminal = ", ".join(f"'{s}'" for s in sorted(TERMINAL_STATUSES))
    for row in _histograms(
        session,
        "finished_at - started_at",
        f"status IN ({terminal}) AND started_at IS NOT NULL AND finished_at IS NOT NULL",
        ("queue", "status"),
    ):
        stats.duration[(str(row[0]), str(row[1]))] = _histogram(row, 2)
    active = [str(s) for s in ACTIVE_STATUSES]
    stats.running = [
        RunningJob(id=str(i), name=str(n), tenant=str(t), queue=str(q), progress=p or {})
        for i, n, t, q, p in session.execute(
            text(
                "SELECT id, name, tenant, queue, progress FROM jobs"
                " WHERE status = ANY(:active) ORDER BY created_at"
            ),
            {"active": active},
        )
    ]
    # Every write of a point takes a new id from the table's sequence (db/metrics.py), so its
    # last value counts the points written, ever: a counter that only grows.
    written = session.execute(
        text("SELECT pg_sequence_last_value(pg_get_serial_sequence('job_metrics', 'id'))")
    ).scalar()
    stats.points_written = int(written or 0)
    return stats
