"""Issue 28, the gang rule in the scheduler's own tables (db/gangs.py), on a real PostgreSQL
(a fresh database of this module, migrated with the real migrations): all or none, fenced
by attempt; one forming gang per queue and oldest first (no two gangs hold devices against
each other); the hold, the backfill and the drain; one dead node loses the attempt on
every node. Workers are simulated by their calls to the same functions a worker makes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from api.webhook_sender import job_as_read
from db import gang_nodes, gangs, jobs, reaping, scheduling, tenants, webhooks
from db.migrate import upgrade
from db.session import session_scope
from tests.integration.conftest import _fresh_database

pytestmark = pytest.mark.integration

LEASE = 30.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    admin_url = os.environ.get(
        "TRAINDEPOT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name, database_url = _fresh_database(admin_url)
    upgrade(database_url)
    try:
        yield database_url
    finally:
        from db.session import get_engine

        get_engine.cache_clear()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def queue(url: str) -> str:
    """A queue of this test alone (the tables are shared by the module's tests)."""
    return f"q-{uuid.uuid4().hex[:8]}"


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def submit(url: str, queue: str, *, nodes: int = 1, gpus: int = 1, tenant: str = "t") -> uuid.UUID:
    spec = {"name": f"n{nodes}g{gpus}", "queue": queue, "resources": {"nodes": nodes, "gpus": gpus}}
    with session_scope(url) as session:
        return jobs.create(session=session, spec=spec, tenant=tenant).id


def claimant(worker: str, queues: list[str], free: int, total: int = 2) -> scheduling.Claimant:
    return scheduling.Claimant(
        queues=queues,
        worker=worker,
        lease_seconds=LEASE,
        free_gpus=free,
        total_gpus=total,
        default_quota=tenants.Quota(100, 100),
    )


def look(
    url: str,
    who: scheduling.Claimant,
    *,
    hold: float = 60.0,
    live: list[str] | None = None,
) -> gangs.Decision:
    with session_scope(url) as session:
        return gangs.take_seat(
            session=session,
            claimant=who,
            endpoint=lambda: (f"10.0.0.{len(who.worker)}", 29400),
            hold_seconds=hold,
            live_workers=None if live is None else (lambda queue, devices: live),
        )


def beat(session: Any, job: uuid.UUID, attempt: int, node: int) -> str | None:
    return gang_nodes.heartbeat(
        session=session, job_id=job, attempt=attempt, node=node, lease_seconds=LEASE
    )


def status(url: str, job_id: uuid.UUID) -> tuple[str, int, str | None]:
    row = sql(url, "SELECT status, attempt, lease_owner FROM jobs WHERE id = %s", job_id)[0]
    return str(row[0]), int(row[1]), row[2]


def test_all_or_none_then_fenced_nodes_with_node_0_as_rendezvous(url: str, queue: str) -> None:
    job = submit(url, queue, nodes=3, gpus=2)
    first = look(url, claimant("a", [queue], free=2))
    assert first.seat is not None and not first.started
    # A second look by a seated worker takes nothing more (one seat per worker).
    assert look(url, claimant("a", [queue], free=2)) == gangs.Decision()
    second = look(url, claimant("bb", [queue], free=2))
    assert second.seat is not None and not second.started
    assert status(url, job) == ("queued", 0, None)  # two of three: nothing started
    with session_scope(url) as session:
        assert gangs.wait_turn(session=session, seat_id=first.seat.id, lease_seconds=LEASE) is True
    third = look(url, claimant("ccc", [queue], free=2))
    assert third.seat is not None and third.started
    assert status(url, job) == ("running", 1, "a")  # node 0's worker holds the job's lease
    with session_scope(url) as session:
        nodes = [
            gangs.wait_turn(session=session, seat_id=seat.id, lease_seconds=LEASE)
            for seat in (first.seat, second.seat, third.seat)
        ]
        assert [n.rank for n in nodes if isinstance(n, gangs.Node)] == [0, 1, 2]
        assert {n.endpoint for n in nodes if isinstance(n, gangs.Node)} == {("10.0.0.1", 29400)}
        assert gang_nodes.nodes_json(session=session, job_id=job, attempt=1) == [
            {"node": 0, "worker": "a", "devices": 2},
            {"node": 1, "worker": "bb", "devices": 2},
            {"node": 2, "worker": "ccc", "devices": 2},
        ]
    # Started: a fourth worker finds no seat, and the normal claim never takes it.
    assert look(url, claimant("dddd", [queue], free=2)).seat is None
    with session_scope(url) as session:
        assert scheduling.claim_next(session=session, claimant=claimant("e", [queue], 2)) is None


def test_one_dead_node_loses_the_attempt_on_every_node_and_the_next_is_fenced(
    url: str, queue: str
) -> None:
    tenant = f"hooked-{queue}"
    with session_scope(url) as session:  # its webhook events name each attempt's nodes
        webhooks.subscribe(
            session=session,
            tenant=tenant,
            url="https://hooks.example/h",
            events=["job.running", "job.requeued"],
        )
    job = submit(url, queue, nodes=2, gpus=1, tenant=tenant)
    look(url, claimant("a", [queue], free=1, total=1))
    look(url, claimant("b", [queue], free=1, total=1))
    assert status(url, job)[:2] == ("running", 1)
    with session_scope(url) as session:
        assert beat(session, job, 1, 0) == "running"
        assert beat(session, job, 1, 1) == "running"
    # Node 1's worker is SIGKILLed: its seat is renewed no more and expires.
    sql(
        url,
        "UPDATE gang_seats SET lease_expires_at = now() - interval '1 s'"
        " WHERE job_id = %s AND node_rank = 1",
        job,
    )
    with session_scope(url) as session:
        assert beat(session, job, 1, 0) is None
        ends = gang_nodes.node_ends(session=session, job_id=job, attempt=1)
    assert [(e.rank, e.alive) for e in ends] == [(0, True), (1, False)]
    # No node renews the job's lease: it expires and the reaper requeues the job.
    sql(url, "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s", job)
    with session_scope(url) as session:
        assert job in reaping.reap_expired(session=session).requeued
    # Any two workers form the next attempt (one of them new); the old one stays fenced.
    look(url, claimant("b", [queue], free=1, total=1))
    started = look(url, claimant("c", [queue], free=1, total=1))
    assert started.started and status(url, job) == ("running", 2, "b")
    with session_scope(url) as session:
        assert beat(session, job, 1, 0) is None
        assert beat(session, job, 2, 1) == ("running")
    # Each event's body (api/webhook_sender.py, from the snapshot the trigger took at its
    # commit) lists the nodes of the attempts as they were then.
    events = sql(url, "SELECT type, data FROM webhook_events WHERE job_id = %s ORDER BY id", job)
    bodies = [(kind, job_as_read(data)["attempts"]) for kind, data in events]
    first = [{"node": 0, "worker": "a", "devices": 1}, {"node": 1, "worker": "b", "devices": 1}]
    second = [{"node": 0, "worker": "b", "devices": 1}, {"node": 1, "worker": "c", "devices": 1}]
    assert [(kind, [a["nodes"] for a in attempts]) for kind, attempts in bodies] == [
        ("job.running", [first]),
        ("job.requeued", [first]),
        ("job.running", [first, second]),
    ]


def test_one_forming_gang_per_queue_and_oldest_first_across_queues(url: str) -> None:
    """Two gangs never hold devices against each other: A and B consume both queues; the
    gang of q2 formed first (B looked at it), so A seats there too, although q1 comes
    first in its queues and holds an older job."""
    q1, q2 = f"q1-{uuid.uuid4().hex[:6]}", f"q2-{uuid.uuid4().hex[:6]}"
    big2 = submit(url, q2, nodes=2, gpus=2)
    other2 = submit(url, q2, nodes=2, gpus=2)
    assert look(url, claimant("b", [q2], free=2)).seat is not None  # forms q2's gang
    big1 = submit(url, q1, nodes=2, gpus=2)
    seat = look(url, claimant("a", [q1, q2], free=2)).seat
    assert seat is not None and seat.job_id == big2
    assert status(url, big2)[0] == "running"
    # With q2's gang started, the next look forms the older gang of q1 ... or q2's next one:
    # one forming gang per queue, never two of one queue.
    look(url, claimant("c", [q1, q2], free=2))
    look(url, claimant("d", [q1, q2], free=2))
    forming = sql(url, "SELECT queue, job_id FROM gangs WHERE queue IN (%s, %s)", q1, q2)
    assert len({row[0] for row in forming}) == len(forming)
    assert {status(url, j)[0] for j in (big1, other2)} <= {"queued", "running"}
    assert "running" in {status(url, j)[0] for j in (big1, other2)}


def test_hold_backfills_small_jobs_then_drains(url: str, queue: str) -> None:
    big = submit(url, queue, nodes=2, gpus=2)
    small = submit(url, queue, nodes=1, gpus=1)
    # A has 2 devices, both free: it takes a seat (holding both).
    assert look(url, claimant("a", [queue], free=2), hold=3600).seat is not None
    # B runs a small job on one of its 2 devices: during the hold it keeps taking small ones.
    b_busy = claimant("b", [queue], free=1)
    decision = look(url, b_busy, hold=3600)
    assert decision == gangs.Decision(drain=False)
    with session_scope(url) as session:
        claimed = scheduling.claim_next(session=session, claimant=b_busy)
    assert claimed is not None and claimed.job_id == small  # backfill: the small job runs
    # After the hold, B takes no new small job: its running one ends and it takes a seat.
    submit(url, queue, nodes=1, gpus=1)
    assert look(url, claimant("b", [queue], free=0), hold=0) == gangs.Decision(drain=True)
    assert look(url, claimant("b", [queue], free=1), hold=0).drain
    done = look(url, claimant("b", [queue], free=2), hold=0)
    assert done.started and status(url, big)[0] == "running"
    # A seated worker's other devices always take small jobs.
    assert look(url, claimant("c", [queue], free=1), hold=0) == gangs.Decision()


def test_a_seat_ends_with_its_job_or_its_lease(url: str, queue: str) -> None:
    job = submit(url, queue, nodes=2, gpus=1)
    seat = look(url, claimant("a", [queue], free=1, total=1)).seat
    assert seat is not None
    with session_scope(url) as session:
        assert gangs.held_devices(session=session)[queue] == 1
        jobs.request_cancel(session=session, job_id=job)
    with session_scope(url) as session:
        assert gangs.wait_turn(session=session, seat_id=seat.id, lease_seconds=LEASE) is None
    # An expired seat is dropped at the next look; its gang forms again around others.
    job2 = submit(url, queue, nodes=2, gpus=1)
    stale = look(url, claimant("a", [queue], free=1, total=1)).seat
    assert stale is not None and stale.job_id == job2
    sql(
        url,
        "UPDATE gang_seats SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
        stale.id,
    )
    assert not look(url, claimant("b", [queue], free=1, total=1)).started
    with session_scope(url) as session:
        assert gangs.wait_turn(session=session, seat_id=stale.id, lease_seconds=LEASE) is None
    assert look(url, claimant("c", [queue], free=1, total=1)).started
    assert status(url, job2)[:2] == ("running", 1)


def test_a_gang_that_cannot_complete_now_holds_no_devices(url: str, queue: str) -> None:
    """Three workers; the first gang runs on two of them: the second gang cannot complete
    until it ends, so the third worker holds no seat for it and keeps taking small jobs
    (no drain); once the first gang's nodes end, the second gang forms and starts."""
    a, b, c = (f"{queue}-{name}" for name in "abc")  # workers of this test alone
    live = [a, b, c]
    first = submit(url, queue, nodes=2, gpus=2)
    look(url, claimant(a, [queue], free=2), live=live)
    assert look(url, claimant(b, [queue], free=2), live=live).started
    second = submit(url, queue, nodes=2, gpus=2)
    small = submit(url, queue)
    assert look(url, claimant(c, [queue], free=2), hold=0, live=live) == gangs.Decision()
    with session_scope(url) as session:
        claimed = scheduling.claim_next(session=session, claimant=claimant(c, [queue], 2))
    assert claimed is not None and claimed.job_id == small
    assert sql(url, "SELECT count(*) FROM gang_seats WHERE job_id = %s", second) == [(0,)]
    # The first gang's nodes end and its job with them: the second gang can complete.
    for node in (0, 1):
        with session_scope(url) as session:
            gang_nodes.end_node(
                session=session,
                job_id=first,
                attempt=1,
                node=node,
                exit_code=0,
                error=None,
                stop_reason=None,
            )
    assert look(url, claimant(a, [queue], free=2), live=live).seat is not None
    assert look(url, claimant(c, [queue], free=1), hold=0, live=live).drain
    assert look(url, claimant(b, [queue], free=2), live=live).started
    assert status(url, second)[:2] == ("running", 1)


def test_prometheus_shows_the_devices_held_by_gangs_still_forming(url: str, queue: str) -> None:
    from api.telemetry import exposition
    from db import stats

    submit(url, queue, nodes=3, gpus=2)
    look(url, claimant("a", [queue], free=2))
    look(url, claimant("b", [queue], free=2))
    with session_scope(url) as session:
        body = exposition(stats.snapshot(session), None).decode()
    assert f'traindepot_gang_held_devices{{queue="{queue}"}} 4.0' in body


def test_the_seat_that_would_start_a_gang_waits_for_its_tenant_s_limit(
    url: str, queue: str
) -> None:
    tenant = f"t-{queue}"
    busy = submit(url, queue, tenant=tenant)
    gang_job = submit(url, queue, nodes=2, gpus=1, tenant=tenant)

    def limited(worker: str) -> scheduling.Claimant:
        return scheduling.Claimant(
            queues=[queue],
            worker=worker,
            lease_seconds=LEASE,
            free_gpus=1,
            total_gpus=1,
            default_quota=tenants.Quota(100, 1),
        )

    assert look(url, limited(f"{queue}-a")).seat is not None  # a first seat holds
    with session_scope(url) as session:
        claimed = scheduling.claim_next(session=session, claimant=limited(f"{queue}-x"))
    assert claimed is not None and claimed.job_id == busy  # the tenant's one running job
    assert look(url, limited(f"{queue}-b")) == gangs.Decision()  # the last seat waits
    assert status(url, gang_job)[0] == "queued"
    sql(url, "UPDATE jobs SET status = 'succeeded' WHERE id = %s", busy)
    assert look(url, limited(f"{queue}-b")).started
    assert status(url, gang_job)[:2] == ("running", 1)


def test_a_look_that_takes_no_seat_resolves_no_endpoint(url: str, queue: str) -> None:
    """Most looks find no gang: they neither resolve the advertised interface nor bind a
    port (a worker whose interface went away still runs small jobs)."""
    submit(url, queue)  # a 1-node job: the normal claim's

    def unreachable() -> tuple[str, int]:
        raise AssertionError("the endpoint was asked for without a seat")

    with session_scope(url) as session:
        decision = gangs.take_seat(
            session=session,
            claimant=claimant("nobody", [queue], free=2),
            endpoint=unreachable,
            hold_seconds=60.0,
        )
    assert decision == gangs.Decision()
