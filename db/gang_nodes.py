"""The nodes of a started gang (a job of several nodes, db/gangs.py), one fate for all of
them: each node's heartbeat renews its seat and the job's lease only while every node of the
attempt is alive; each node records its end on its seat, which node 0 reads to decide the
job's fate (worker/gang.py); and the nodes as `GET /jobs/{id}` lists them. Keyword-only; the
caller owns the commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import attempts
from db.models import GangSeat, JobStatus


def heartbeat(
    *, session: Session, job_id: uuid.UUID, attempt: int, node: int, lease_seconds: float
) -> JobStatus | None:
    """A node's renewal: its seat's lease, then the job's, only while every node of the
    attempt is alive (ended, or its lease unexpired). The job's status, or None when the
    attempt is lost: another attempt owns the job, or a node died."""
    renewed = session.execute(
        update(GangSeat)
        .where(
            GangSeat.job_id == job_id,
            GangSeat.attempt == attempt,
            GangSeat.node_rank == node,
        )
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(GangSeat.id)
    ).first()
    dead = session.scalar(
        select(func.count())
        .select_from(GangSeat)
        .where(
            GangSeat.job_id == job_id,
            GangSeat.attempt == attempt,
            GangSeat.ended_at.is_(None),
            GangSeat.lease_expires_at < func.now(),
        )
    )
    if renewed is None or dead:
        return None
    return attempts.heartbeat(
        session=session, job_id=job_id, attempt=attempt, lease_seconds=lease_seconds
    )


def end_node(
    *,
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    node: int,
    exit_code: int | None,
    error: dict[str, Any] | None,
    stop_reason: str | None,
) -> None:
    """A node's training child exited: what node 0 needs to decide the job's fate."""
    session.execute(
        update(GangSeat)
        .where(
            GangSeat.job_id == job_id,
            GangSeat.attempt == attempt,
            GangSeat.node_rank == node,
        )
        .values(ended_at=func.now(), exit_code=exit_code, error=error, stop_reason=stop_reason)
    )


@dataclass(frozen=True)
class NodeEnd:
    rank: int
    ended: bool
    alive: bool  # ended, or its lease unexpired
    error: dict[str, Any] | None
    stop_reason: str | None


def node_ends(*, session: Session, job_id: uuid.UUID, attempt: int) -> list[NodeEnd]:
    rows = session.execute(
        select(
            GangSeat.node_rank,
            GangSeat.ended_at,
            GangSeat.ended_at.is_not(None) | (GangSeat.lease_expires_at >= func.now()),
            GangSeat.error,
            GangSeat.stop_reason,
        )
        .where(GangSeat.job_id == job_id, GangSeat.attempt == attempt)
        .order_by(GangSeat.node_rank)
    ).all()
    return [
        NodeEnd(
            rank=int(rank),
            ended=ended is not None,
            alive=bool(alive),
            error=error,
            stop_reason=stop_reason,
        )
        for rank, ended, alive, error, stop_reason in rows
    ]


def nodes_json(*, session: Session, job_id: uuid.UUID, attempt: int) -> list[dict[str, Any]]:
    """The nodes of an attempt for `GET /jobs/{id}`: node rank, worker, devices."""
    rows = session.execute(
        select(GangSeat.node_rank, GangSeat.worker, GangSeat.devices)
        .where(GangSeat.job_id == job_id, GangSeat.attempt == attempt)
        .order_by(GangSeat.node_rank)
    ).all()
    return [{"node": r[0], "worker": r[1], "devices": r[2]} for r in rows]
