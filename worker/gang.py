"""A worker's part in the gangs of jobs of several nodes (the rule: db/gangs.py;
docs/architecture.md, "Gangs").

- `look`: before a worker claims a small job, it looks at the gangs: it may take a seat
  (holding the job's devices per node) or be told to drain (take no new small job);
- `wait`: the task thread that took a seat renews it until the gang starts, then runs
  its node (worker/tasks.py): torch's launcher with this node's rank, meeting the other
  nodes at node 0's rendezvous (worker/launcher.py);
- `end_of_node`: after its child exits, a node records its end on its seat; node 0 waits
  for every other node's end (or for one to be found dead) and decides the job's fate
  for all of them.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from db import gang_nodes, gangs, scheduling
from db.retry import TRANSIENT
from db.session import session_scope
from traindepot import dispatch
from traindepot.settings import Settings
from traindepot.store import ArtifactStore
from worker import network
from worker import restore as restore_module
from worker.launcher import NodeOf
from worker.outcome import first_rank_error_at

if TYPE_CHECKING:
    from worker.supervisor import Supervisor

log = logging.getLogger(__name__)


def look(settings: Settings, claimant: scheduling.Claimant) -> gangs.Decision:
    """The claimant's look at the gangs (db/gangs.py `take_seat`). Only a seat taken asks
    for the endpoint it offers: the advertised address, and a port free on it now (node 0's
    hosts the attempt's rendezvous); a look that finds no gang (most) resolves nothing."""
    with session_scope() as session:
        return gangs.take_seat(
            session=session,
            claimant=claimant,
            endpoint=lambda: _endpoint(settings),
            hold_seconds=settings.gang_hold_seconds,
            live_workers=lambda queue, devices: _live(settings, queue, devices),
        )


def _endpoint(settings: Settings) -> tuple[str, int]:
    address = network.advertised(settings)
    return address, free_port(address)


def _live(settings: Settings, queue: str, devices: int) -> list[str] | None:
    """The live workers of `queue` with `devices` or more (the registry), None: unknown."""
    if not settings.redis_url:
        return None
    found = dispatch.live_workers(redis_url=settings.redis_url, queue=queue)
    return None if found is None else [w.worker for w in found if w.devices >= devices]


def free_port(address: str) -> int:
    """A port free on `address` now (the rendezvous of an attempt this node may host)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def wait(settings: Settings, seat: gangs.Seat, stopping: Any) -> gangs.Node | None:
    """Renew `seat` every `heartbeat_seconds` until its gang starts (the node this worker
    runs), or None: the seat was dropped (the job left the queue, the seat expired) or the
    worker shuts down (`stopping` set: the seat is given up)."""
    while True:
        try:
            with session_scope() as session:
                if stopping.is_set():
                    gangs.leave(session=session, seat_id=seat.id)
                    return None
                state = gangs.wait_turn(
                    session=session, seat_id=seat.id, lease_seconds=settings.lease_seconds
                )
        except TRANSIENT as exc:
            log.warning("gang seat %s: not renewed (%s)", seat.id, exc)
            state = True
        if state is None or isinstance(state, gangs.Node):
            return state
        time.sleep(min(settings.heartbeat_seconds, 1.0))


def node_of(settings: Settings, node: gangs.Node) -> NodeOf:
    return NodeOf(
        rank=node.rank,
        nodes=node.nodes,
        endpoint=node.endpoint,
        local=network.advertised(settings),
    )


def restore(
    store: ArtifactStore, settings: Settings, job_id: uuid.UUID, attempt: int, ranks: int
) -> None:
    """Node k > 0: the job's checkpoints to resume from, from the store, as node 0 gets
    them (the ranks then agree on the newest one every node has: worker/ranks.py). The
    job's directory is held (never evicted from the cache) until `release`."""
    restore_module.hold(job_id, settings.job_dir(job_id).resolve())
    if attempt > 1:
        restore_module.restore(
            store,
            settings,
            job_id=job_id,
            attempt=attempt,
            resume_from_checkpoint=None,
            ranks=ranks,
        )


def release(job_id: uuid.UUID) -> None:
    restore_module.release(job_id)


@dataclass(frozen=True)
class Ends:
    """What node 0 learned of every node's end: the earliest rank error of all of them,
    and why one stopped training (a node's warm shutdown stops every node)."""

    first_error: dict[str, Any] | None
    stop_reason: Any


def end_of_node(supervisor: Supervisor, returncode: int) -> Ends | None:
    """Record this node's end; on node 0, wait for the others'. None: nothing more for this
    supervisor to write (a node other than 0, or the attempt was lost with a node, which
    the reaper requeues once the job's lease, renewed no more, expires)."""
    node = supervisor.node
    assert node is not None
    local = first_rank_error_at(supervisor.job_dir, supervisor.attempt)
    with session_scope() as session:
        gang_nodes.end_node(
            session=session,
            job_id=supervisor.job_id,
            attempt=supervisor.attempt,
            node=node.rank,
            exit_code=returncode,
            error=None if local is None else {"at": local[0], "error": local[1]},
            stop_reason=supervisor.stop_reason,
        )
    if node.rank > 0:
        return None
    ends = _await_nodes(supervisor)
    if ends is None:
        log.warning(
            "job %s attempt %s: a node died; the attempt is lost on every node",
            supervisor.job_id,
            supervisor.attempt,
        )
        if supervisor.store is not None:
            supervisor.store.lost()
        return None
    return merge(ends)


def merge(ends: list[gang_nodes.NodeEnd]) -> Ends:
    """Every node's end as one: the earliest rank error of any node (the others' are its
    echo: their collectives lost a peer), and the first stop reason recorded, node 0's
    first."""
    errors = [
        (float(end.error["at"]), dict(end.error["error"])) for end in ends if end.error is not None
    ]
    reasons = [end.stop_reason for end in sorted(ends, key=lambda e: e.rank) if end.stop_reason]
    first = min(errors, key=lambda pair: pair[0])[1] if errors else None
    return Ends(first_error=first, stop_reason=reasons[0] if reasons else None)


def _await_nodes(supervisor: Supervisor) -> list[gang_nodes.NodeEnd] | None:
    """Every node's end once all have ended; None once one is found dead (its seat's lease
    expired unended) or this attempt's lease is lost."""
    # A node stopping at the same step ends within the grace period (then it is killed).
    settings = supervisor.settings
    deadline = time.monotonic() + settings.cancel_grace_seconds + 3 * settings.lease_seconds
    while time.monotonic() < deadline and not supervisor.lease.lost.is_set():
        try:
            with session_scope() as session:
                ends = gang_nodes.node_ends(
                    session=session, job_id=supervisor.job_id, attempt=supervisor.attempt
                )
        except TRANSIENT as exc:
            log.warning("job %s: node ends not read (%s)", supervisor.job_id, exc)
            ends = []
        if ends and all(end.ended for end in ends):
            return ends
        if any(not end.alive for end in ends):
            return None
        time.sleep(0.2)
    return None
