"""Queries on webhooks: subscriptions, the outbox as the sender works through it, and the
deliveries of a job. Keyword-only; the caller owns the commit.

The outbox rows of a status change are written by the trigger of migration 0008, in the
transaction of the change (docs/architecture.md, "Webhooks"); this module never writes a
job event itself. A sweep's events (`sweep.*`) are written here, by its driver, in the
transaction of the pass that made them.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, text
from sqlalchemy.orm import Session

from db.models import Webhook, WebhookDelivery, WebhookEvent
from traindepot import webhooks as contract

# The channel the trigger (migration 0008) and `add_test_event` notify on commit: the
# sender listens and looks for work at once instead of at its next poll.
CHANNEL = "traindepot_webhooks"


def subscribe(
    *,
    session: Session,
    tenant: str,
    url: str,
    events: list[str],
    job_id: uuid.UUID | None = None,
) -> Webhook:
    """A new subscription with a new secret (the caller shows it once)."""
    hook = Webhook(
        id=uuid.uuid4(),
        tenant=tenant,
        job_id=job_id,
        url=url,
        events=list(events),
        secret=contract.new_secret(),
    )
    session.add(hook)
    session.flush()
    session.refresh(hook)
    return hook


def tenant_subscriptions(*, session: Session, tenant: str | None) -> list[Webhook]:
    """The subscriptions made with `POST /webhooks` (of one tenant unless None)."""
    query = select(Webhook).where(Webhook.job_id.is_(None)).order_by(Webhook.created_at)
    if tenant is not None:
        query = query.where(Webhook.tenant == tenant)
    return list(session.scalars(query))


def count_tenant_subscriptions(*, session: Session, tenant: str) -> int:
    query = select(func.count()).where(Webhook.job_id.is_(None), Webhook.tenant == tenant)
    return int(session.scalar(query) or 0)


def get(*, session: Session, webhook_id: uuid.UUID, tenant: str | None) -> Webhook | None:
    """A subscription of `POST /webhooks` (of `tenant` unless None)."""
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.job_id is not None or (tenant is not None and hook.tenant != tenant):
        return None
    return hook


def unsubscribe(*, session: Session, webhook_id: uuid.UUID) -> None:
    """Its deliveries not made yet go with it (ON DELETE CASCADE)."""
    session.execute(delete(Webhook).where(Webhook.id == webhook_id))


def add_sweep_event(
    *, session: Session, tenant: str, event_type: str, data: dict[str, Any]
) -> None:
    """A sweep's event (db/sweeps.py) for each subscription of `tenant` that asked for it,
    in the caller's transaction: it commits with the change it tells of, or not at all."""
    hooks = list(
        session.scalars(
            select(Webhook.id).where(
                Webhook.job_id.is_(None),
                Webhook.tenant == tenant,
                literal(event_type) == func.any(Webhook.events),
            )
        )
    )
    if not hooks:
        return
    event = WebhookEvent(type=event_type, job_id=None, data=data)
    session.add(event)
    session.flush()
    for hook in hooks:
        session.add(WebhookDelivery(id=uuid.uuid4(), event_id=event.id, webhook_id=hook))
    session.flush()
    session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def add_test_event(*, session: Session, hook: Webhook) -> WebhookDelivery:
    """A `webhook.test` event for `hook` alone, delivered like any other."""
    event = WebhookEvent(
        type=contract.TEST_EVENT,
        job_id=None,
        data={"webhook_id": str(hook.id), "message": "a test event from traindepot"},
    )
    session.add(event)
    session.flush()
    delivery = WebhookDelivery(id=uuid.uuid4(), event_id=event.id, webhook_id=hook.id)
    session.add(delivery)
    session.flush()
    session.refresh(delivery)
    session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
    return delivery


@dataclass(frozen=True)
class JobDelivery:
    delivery: WebhookDelivery
    event_type: str
    url: str


def job_deliveries(*, session: Session, job_id: uuid.UUID) -> list[JobDelivery]:
    """Every delivery of the job's events, in event order."""
    rows = session.execute(
        select(WebhookDelivery, WebhookEvent.type, Webhook.url)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.event_id, WebhookDelivery.created_at)
    )
    return [JobDelivery(delivery, event_type, url) for delivery, event_type, url in rows]


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender took, with what it needs to make the attempt."""

    id: uuid.UUID
    webhook_id: uuid.UUID
    attempts: int  # before this attempt: the fence of `record_attempt`
    url: str
    secret: str
    event_type: str
    event_data: dict[str, Any]
    occurred_at: datetime


# Due deliveries whose earlier events (same job, same subscription) are all delivered or
# given up: order per job and subscription. At most one per subscription, and none of the
# subscriptions the sender already has an attempt in flight for (`busy`): a receiver that
# hangs holds one of the sender's threads, never all of them. SKIP LOCKED lets senders take
# disjoint rows; the claim pushes `next_attempt_at` forward by the lease, so the row is this
# sender's until it records the attempt, or until the lease ends if it dies first
# (at-least-once).
_CLAIM = text(
    """
    WITH candidates AS (
        SELECT DISTINCT ON (d.webhook_id) d.id FROM webhook_deliveries d
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
          AND NOT (d.webhook_id = ANY (CAST(:busy AS uuid[])))
          AND NOT EXISTS (
              SELECT 1 FROM webhook_deliveries e
              WHERE e.webhook_id = d.webhook_id AND e.job_id = d.job_id
                AND e.status = 'pending' AND e.event_id < d.event_id)
        ORDER BY d.webhook_id, d.next_attempt_at
    ), due AS (
        SELECT d.id FROM webhook_deliveries d JOIN candidates c ON c.id = d.id
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_deliveries d
    SET next_attempt_at = now() + make_interval(secs => :lease)
    FROM due WHERE d.id = due.id
    RETURNING d.id
    """
)


def claim_due(
    *,
    session: Session,
    limit: int,
    lease_seconds: float,
    busy: Collection[uuid.UUID] = (),
) -> list[Claimed]:
    params = {"limit": limit, "lease": lease_seconds, "busy": [str(b) for b in busy]}
    ids = list(session.scalars(_CLAIM, params))
    if not ids:
        return []
    rows = session.execute(
        select(WebhookDelivery, Webhook, WebhookEvent)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id.in_(ids))
        .order_by(WebhookDelivery.event_id)
    )
    return [
        Claimed(
            id=delivery.id,
            webhook_id=delivery.webhook_id,
            attempts=delivery.attempts,
            url=hook.url,
            secret=hook.secret,
            event_type=event.type,
            event_data=event.data,
            occurred_at=event.created_at,
        )
        for delivery, hook, event in rows
    ]


# One attempt's result. A 2xx: delivered. Otherwise: failed once the event is older than the
# retry window, else due again after `delay` (never later than the window's end, so the
# last attempt is made at the end of it). Fenced by the attempt count the sender took it
# with: a sender whose lease ran out and whose row another sender took records nothing.
_RECORD = text(
    """
    UPDATE webhook_deliveries SET
        attempts = attempts + 1,
        last_attempt_at = now(),
        last_status_code = :code,
        last_error = :error,
        status = CASE
            WHEN :delivered THEN 'delivered'
            WHEN now() >= created_at + make_interval(secs => :window) THEN 'failed'
            ELSE 'pending' END,
        finished_at = CASE
            WHEN :delivered OR now() >= created_at + make_interval(secs => :window)
            THEN now() END,
        next_attempt_at = LEAST(
            now() + make_interval(secs => :delay),
            created_at + make_interval(secs => :window))
    WHERE id = :id AND attempts = :attempts AND status = 'pending'
    """
)


def record_attempt(
    *,
    session: Session,
    claimed: Claimed,
    status_code: int | None,
    error: str | None,
    delivered: bool,
    delay_seconds: float,
    window_seconds: float,
) -> None:
    session.execute(
        _RECORD,
        {
            "id": claimed.id,
            "attempts": claimed.attempts,
            "code": status_code,
            "error": error[:500] if error else None,
            "delivered": delivered,
            "delay": delay_seconds,
            "window": window_seconds,
        },
    )


def purge_finished(*, session: Session, before: datetime) -> int:
    """Delete the events older than `before` none of whose deliveries is still pending,
    with their deliveries; returns how many events went. (Each event keeps a snapshot of its
    job, spec included: kept for ever they would grow without bound.)"""
    result = session.execute(
        delete(WebhookEvent).where(
            WebhookEvent.created_at < before,
            ~select(WebhookDelivery.id)
            .where(
                WebhookDelivery.event_id == WebhookEvent.id,
                WebhookDelivery.status == "pending",
            )
            .exists(),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
