"""Gang scheduling of jobs of several nodes (`resources.nodes` M > 1): M workers, each with
`resources.gpus` N free devices, start the job together or none does. Keyword-only; the
caller owns the commit (docs/architecture.md, "Gangs").

The rule, decided under one transaction-scoped advisory lock (seat taking is rare and
short, so one lock for every queue costs nothing and makes the rule simple to reason
about):

- **One forming gang per queue** (`gangs`, primary key `queue`): the most urgent queued
  multi-node job of the queue that some eligible worker looked at. It keeps its
  `formed_at` until it starts or leaves the queue.
- **Oldest first**: a worker takes a seat only in the *oldest* forming gang it is eligible
  for (it consumes the gang's queue and owns at least N devices). While it is eligible for
  an older gang it never holds devices for a younger one, so the oldest gang's seats are
  never held against it by another gang: no two gangs wait on each other (no deadlock),
  and by induction on age every gang starts.
- **Hold, then drain**: a seat holds N devices of its worker. For `gang_hold_seconds`
  after the gang formed, workers without a seat still take small jobs on their free
  devices (backfill), and a worker's devices outside its seat always do. Once the hold has
  passed, an eligible worker without a seat takes no new small job (`Decision.drain`): its
  running ones end, its devices free up, it takes a seat. So a gang starts within
  `gang_hold_seconds` + the longest remaining run of a small job on its eligible workers
  (+ a wake-up), provided M eligible workers are alive; and small jobs are never starved,
  since every gang lets them run for its hold and while it runs on other devices.
- **All or none, fenced**: the seat that completes the gang claims the job in the same
  transaction (`db/attempts.py` `claim`, leased to node 0's worker): every seat gets the
  attempt and its node rank (in seat order). Node 0's seat gives the rendezvous endpoint,
  its worker's advertised address and the port it chose when it took the seat.
- **One fate**: a started seat's lease is its node's heartbeat (db/gang_nodes.py): once
  any node's seat expires unended, every node's heartbeat finds the attempt lost and no
  node renews the job's lease, which the reaper then requeues (within 2 x `lease_seconds`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from db import attempts, scheduling, tenants
from db.models import ACTIVE_STATUSES, Gang, GangSeat, Job, JobStatus

# The live workers of a queue that own at least so many devices (None: unknown).
LiveWorkers = Callable[[str, int], Collection[str] | None]

# The advisory lock that serialises seat taking (any number that no other lock uses).
GANG_LOCK = 0x7467616E67  # "tgang"


@dataclass(frozen=True)
class Seat:
    """A seat this worker took: `devices` of it are held for the job's gang."""

    id: int
    job_id: uuid.UUID
    devices: int


@dataclass(frozen=True)
class Decision:
    """What a worker's look at the gangs gave: a seat it just took (or None), whether that
    seat completed the gang (the attempt started), and whether it must take no new small
    job (the drain)."""

    seat: Seat | None = None
    started: bool = False
    drain: bool = False


@dataclass(frozen=True)
class Node:
    """One node of a started attempt, as its worker runs it."""

    seat_id: int
    job_id: uuid.UUID
    attempt: int
    rank: int
    nodes: int
    devices: int
    endpoint: tuple[str, int]  # node 0's address and port: the rendezvous


def take_seat(
    *,
    session: Session,
    claimant: scheduling.Claimant,
    endpoint: Callable[[], tuple[str, int]],
    hold_seconds: float,
    live_workers: LiveWorkers | None = None,
) -> Decision:
    """The claimant's look at the gangs (module docstring): join the oldest forming gang it
    is eligible for if it has the devices free, else tell it whether to drain; with no
    such gang, form one for the most urgent queued multi-node job of its queues.
    `live_workers(queue, devices)` names the live workers of a queue that own that many
    devices (the registry; None: unknown): a gang that cannot complete now, because too
    few of them are not running another gang's nodes, holds no seat and drains nothing.
    `endpoint()`, asked only when the claimant takes a seat: the address and port it offers
    (node 0's hosts the attempt's rendezvous)."""
    if not _any_gang(session, claimant.queues):
        return Decision()  # the common case, without the lock
    session.execute(select(func.pg_advisory_xact_lock(GANG_LOCK)))
    _drop_stale(session)
    for gang, job in _forming(session, claimant.queues):
        if job.gpus > claimant.total_gpus:
            continue  # not eligible: too few devices even when all are free
        seats = _seats(session, job.id)
        if any(seat.worker == claimant.worker for seat in seats):
            return Decision()  # seated: its other free devices run small jobs
        if not _may_complete(session, job, seats, claimant.worker, live_workers):
            return Decision()
        last = len(seats) + 1 == job.nodes
        if last and not tenants.may_start_another(
            session=session, tenant=job.tenant, default=claimant.default_quota
        ):
            # The seat that would start it waits while its tenant runs its limit (checked
            # under the tenant's lock, as the normal claim does).
            return Decision()
        if job.gpus > claimant.free_gpus:
            held = session.scalar(select(func.extract("epoch", func.now() - gang.formed_at)))
            return Decision(drain=float(held or 0) >= hold_seconds)
        return _sit(session, claimant, job, len(seats), endpoint)
    formed = _form(session, claimant)
    if formed is None or not _may_complete(session, formed, [], claimant.worker, live_workers):
        return Decision()
    session.execute(insert(Gang).values(queue=formed.queue, job_id=formed.id))
    if formed.gpus > claimant.free_gpus:
        return Decision(drain=hold_seconds <= 0)
    return _sit(session, claimant, formed, 0, endpoint)


def _may_complete(
    session: Session,
    job: Job,
    seats: Sequence[GangSeat],
    worker: str,
    live_workers: LiveWorkers | None,
) -> bool:
    """Enough workers could sit in the gang now: live eligible ones that run no node of a
    started gang, the seated ones and the claimant (unknown live workers: yes)."""
    live = None if live_workers is None else live_workers(job.queue, job.gpus)
    if live is None:
        return True
    busy = set(
        session.scalars(
            select(GangSeat.worker)
            .join(Job, Job.id == GangSeat.job_id)
            .where(
                GangSeat.attempt == Job.attempt,
                GangSeat.ended_at.is_(None),
                Job.status.in_(list(ACTIVE_STATUSES)),
            )
        )
    )
    candidates = (set(live) - busy) | {seat.worker for seat in seats} | {worker}
    return len(candidates) >= job.nodes


def _any_gang(session: Session, queues: Sequence[str]) -> bool:
    """A multi-node job queued in `queues`, or a seat of a forming gang anywhere."""
    waiting = exists().where(
        Job.status == JobStatus.QUEUED, Job.nodes > 1, Job.queue.in_(list(queues))
    )
    seated = exists().where(GangSeat.attempt.is_(None))
    return bool(session.scalar(select(waiting | seated)))


def _drop_stale(session: Session) -> None:
    """Seats whose worker stopped renewing them, and gangs (with their seats) whose job left
    the queue (cancelled, deleted, started)."""
    not_queued = select(Job.id).where(Job.status != JobStatus.QUEUED)
    session.execute(
        delete(GangSeat).where(
            GangSeat.attempt.is_(None),
            (GangSeat.lease_expires_at < func.now()) | GangSeat.job_id.in_(not_queued),
        )
    )
    session.execute(delete(Gang).where(Gang.job_id.in_(not_queued)))


def _forming(session: Session, queues: Sequence[str]) -> list[tuple[Gang, Job]]:
    """The forming gangs of `queues`, oldest first."""
    rows = session.execute(
        select(Gang, Job)
        .join(Job, Job.id == Gang.job_id)
        .where(Gang.queue.in_(list(queues)))
        .order_by(Gang.formed_at, Gang.queue)
    ).all()
    return [(row[0], row[1]) for row in rows]


def _seats(session: Session, job_id: uuid.UUID) -> list[GangSeat]:
    return list(
        session.scalars(
            select(GangSeat)
            .where(GangSeat.job_id == job_id, GangSeat.attempt.is_(None))
            .order_by(GangSeat.taken_at, GangSeat.id)
        )
    )


def _form(session: Session, claimant: scheduling.Claimant) -> Job | None:
    """The job of a new gang: the most urgent queued multi-node job of a queue of the claimant that
    has none, that it is eligible for and whose tenant may start another job."""
    taken = select(Gang.queue)
    job = session.scalars(
        select(Job)
        .where(
            Job.status == JobStatus.QUEUED,
            Job.nodes > 1,
            Job.queue.in_(list(claimant.queues)),
            Job.queue.not_in(taken),
            Job.gpus <= claimant.total_gpus,
            ~scheduling.tenants_at_limit(claimant.default_quota.max_running_jobs),
        )
        .order_by(Job.effective_queued_at, Job.id)
        .limit(1)
    ).first()
    return job


def _sit(
    session: Session,
    claimant: scheduling.Claimant,
    job: Job,
    seated: int,
    endpoint: Callable[[], tuple[str, int]],
) -> Decision:
    address, port = endpoint()
    seat_id = session.scalar(
        insert(GangSeat)
        .values(
            job_id=job.id,
            queue=job.queue,
            worker=claimant.worker,
            devices=job.gpus,
            address=address,
            port=port,
            lease_expires_at=func.now() + timedelta(seconds=claimant.lease_seconds),
        )
        .returning(GangSeat.id)
    )
    assert seat_id is not None
    seat = Seat(id=int(seat_id), job_id=job.id, devices=int(job.gpus))
    if seated + 1 < job.nodes:
        return Decision(seat=seat)
    _start(session, job.id, claimant.lease_seconds)
    return Decision(seat=seat, started=True)


def _start(session: Session, job_id: uuid.UUID, lease_seconds: float) -> int:
    """Every seat taken: claim the job for node 0's worker, number the nodes in seat
    order, give each seat the attempt (and a fresh lease), and end the forming gang."""
    seats = _seats(session, job_id)
    attempt = attempts.claim(
        session=session, job_id=job_id, worker=seats[0].worker, lease_seconds=lease_seconds
    )
    assert attempt is not None  # queued, under the gang lock; `_drop_stale` ran first
    for rank, seat in enumerate(seats):
        session.execute(
            update(GangSeat)
            .where(GangSeat.id == seat.id)
            .values(
                attempt=attempt,
                node_rank=rank,
                lease_expires_at=func.now() + timedelta(seconds=lease_seconds),
            )
        )
    session.execute(delete(Gang).where(Gang.job_id == job_id))
    return attempt


def wait_turn(*, session: Session, seat_id: int, lease_seconds: float) -> Node | bool | None:
    """Renew a seat of a forming gang. The node to run once the gang started; True while
    it still forms; None when the seat is gone (it expired, the job left the queue)."""
    row = session.execute(
        update(GangSeat)
        .where(GangSeat.id == seat_id, GangSeat.ended_at.is_(None))
        .values(lease_expires_at=func.now() + timedelta(seconds=lease_seconds))
        .returning(GangSeat.job_id, GangSeat.attempt)
    ).first()
    if row is None:
        return None
    job_id, attempt = row
    if attempt is None:
        queued = session.scalar(select(Job.status).where(Job.id == job_id)) == JobStatus.QUEUED
        return True if queued else None
    return node_of(session=session, seat_id=seat_id)


def node_of(*, session: Session, seat_id: int) -> Node | None:
    seat = session.get(GangSeat, seat_id)
    if seat is None or seat.attempt is None or seat.node_rank is None:
        return None
    first = session.scalars(
        select(GangSeat).where(
            GangSeat.job_id == seat.job_id,
            GangSeat.attempt == seat.attempt,
            GangSeat.node_rank == 0,
        )
    ).one()
    nodes = session.scalar(select(Job.nodes).where(Job.id == seat.job_id))
    return Node(
        seat_id=seat.id,
        job_id=seat.job_id,
        attempt=seat.attempt,
        rank=seat.node_rank,
        nodes=int(nodes or 1),
        devices=seat.devices,
        endpoint=(first.address, first.port),
    )


def leave(*, session: Session, seat_id: int) -> None:
    """Give up a seat of a forming gang (the worker shuts down)."""
    session.execute(delete(GangSeat).where(GangSeat.id == seat_id, GangSeat.attempt.is_(None)))


def held_devices(*, session: Session) -> dict[str, int]:
    """Devices held by seats of gangs still forming, per queue (Prometheus)."""
    rows = session.execute(
        select(GangSeat.queue, func.sum(GangSeat.devices))
        .where(GangSeat.attempt.is_(None), GangSeat.lease_expires_at >= func.now())
        .group_by(GangSeat.queue)
    ).all()
    return {str(queue): int(total) for queue, total in rows}


def forming_since(*, session: Session, queue: str) -> datetime | None:
    return session.scalar(select(Gang.formed_at).where(Gang.queue == queue))
