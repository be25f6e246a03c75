"""Webhooks: a tenant's subscriptions (`/webhooks`), a test event, and what became of a
job's events (`GET /jobs/{id}/deliveries`). Sending is the sender's (api/webhook_sender.py);
these routes only read and write rows."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.access import AccessDep, Caller, load_job
from api.deps import SettingsDep
from api.errors import NotFound, TooManyRequests
from api.responses import errors
from api.webhook_schemas import DeliveryOut, NewWebhookOut, WebhookIn, WebhookOut
from db import webhooks
from db.models import Webhook
from traindepot.problems import Problem, SpecInvalid
from traindepot.validation import webhook_url_problem

router = APIRouter(tags=["webhooks"])
_ERRORS = errors(401, 422, 503, s404="No such subscription (or job)")


def _load(session: Session, caller: Caller, webhook_id: uuid.UUID) -> Webhook:
    hook = webhooks.get(session=session, webhook_id=webhook_id, tenant=caller.scope)
    if hook is None:
        raise NotFound(f"webhook {webhook_id}")
    return hook


@router.post(
    "/webhooks",
    status_code=201,
    response_model=NewWebhookOut,
    responses={**_ERRORS, **errors(s429="Too many subscriptions")},
)
async def subscribe(body: WebhookIn, access: AccessDep, settings: SettingsDep) -> NewWebhookOut:
    """Send `events` of every job of the caller's tenant to `url`, signed with the secret
    in this response (shown once). A URL resolving to a loopback, private or link-local
    address is refused (422) unless the server allows its network."""
    await access.who()
    problem = await run_in_threadpool(webhook_url_problem, body.url, settings)
    if problem is not None:
        raise SpecInvalid([Problem(("url",), problem, "webhook_url")])

    def create(session: Session, caller: Caller) -> NewWebhookOut:
        have = webhooks.count_tenant_subscriptions(session=session, tenant=caller.tenant)
        if have >= settings.max_webhooks_per_tenant:
            raise TooManyRequests(
                f"tenant {caller.tenant!r} has {have} webhooks, the most it may have; "
                "delete one first",
                settings.quota_retry_after_seconds,
            )
        hook = webhooks.subscribe(
            session=session, tenant=caller.tenant, url=body.url, events=list(body.events)
        )
        return NewWebhookOut.of(hook)

    return await access.run(create, commit=True)


@router.get("/webhooks", response_model=list[WebhookOut], responses=_ERRORS)
async def list_webhooks(access: AccessDep) -> list[WebhookOut]:
    """The caller's tenant's subscriptions (an admin's: every tenant's); never a secret."""

    def read(session: Session, caller: Caller) -> list[WebhookOut]:
        found = webhooks.tenant_subscriptions(session=session, tenant=caller.scope)
        return [WebhookOut.of(h) for h in found]

    return await access.run(read)


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=_ERRORS)
async def unsubscribe(webhook_id: uuid.UUID, access: AccessDep) -> Response:
    """Stop sending; its deliveries not made yet are dropped."""

    def remove(session: Session, caller: Caller) -> None:
        _load(session, caller, webhook_id)
        webhooks.unsubscribe(session=session, webhook_id=webhook_id)

    await access.run(remove, commit=True)
    return Response(status_code=204)


@router.post(
    "/webhooks/{webhook_id}/test", status_code=202, response_model=DeliveryOut, responses=_ERRORS
)
async def send_test(webhook_id: uuid.UUID, access: AccessDep) -> DeliveryOut:
    """Queue a signed `webhook.test` event for this subscription; the delivery returned
    shows its progress in `GET /jobs/{id}/deliveries` terms (it belongs to no job)."""

    def queue(session: Session, caller: Caller) -> DeliveryOut:
        hook = _load(session, caller, webhook_id)
        delivery = webhooks.add_test_event(session=session, hook=hook)
        return DeliveryOut.of(delivery, "webhook.test", hook.url)

    return await access.run(queue, commit=True)


@router.get("/jobs/{job_id}/deliveries", response_model=list[DeliveryOut], responses=_ERRORS)
async def job_deliveries(job_id: uuid.UUID, access: AccessDep) -> list[DeliveryOut]:
    """Every webhook delivery of the job's events, in event order: attempts, the last
    status code or error, and when a pending one is tried next."""

    def read(session: Session, caller: Caller) -> list[DeliveryOut]:
        load_job(session, caller, job_id)
        found = webhooks.job_deliveries(session=session, job_id=job_id)
        return [DeliveryOut.of(d.delivery, d.event_type, d.url) for d in found]

    return await access.run(read)
