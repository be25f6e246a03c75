"""Webhook response and request schemas: subscriptions, their deliveries, and the submit's
response that carries a job's own subscriptions with their secrets (api/routes/webhooks.py,
api/routes/job_actions.py)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from api.schemas import JobOut, ParametersOut
from db.models import Webhook, WebhookDelivery
from traindepot.spec import WebhookTarget
from traindepot.webhooks import EVENT_TYPES, SWEEP_EVENT_TYPES, EventType, SweepEventType


class WebhookIn(WebhookTarget):
    """A subscription to every job of the caller's tenant (`POST /webhooks`), and to its
    sweeps' events (`sweep.*`); a job's own are in its spec (`notify.webhooks`), with the
    same fields."""

    events: list[EventType | SweepEventType] = Field(  # type: ignore[assignment]
        default_factory=lambda: [*EVENT_TYPES, *SWEEP_EVENT_TYPES],
        min_length=1,
        description="The events to send; default: all of them.",
    )


class WebhookOut(BaseModel):
    id: uuid.UUID
    tenant: str
    job_id: uuid.UUID | None = Field(
        description="The job it belongs to (`notify.webhooks` of its spec); null: every "
        "job of the tenant."
    )
    url: str
    events: list[str]
    created_at: datetime

    @classmethod
    def of(cls, hook: Webhook) -> WebhookOut:
        return cls(
            id=hook.id,
            tenant=hook.tenant,
            job_id=hook.job_id,
            url=hook.url,
            events=list(hook.events),
            created_at=hook.created_at,
        )


class NewWebhookOut(WebhookOut):
    secret: str = Field(
        description="The signing secret (`whsec_...`, Standard Webhooks): shown this once."
    )

    @classmethod
    def of(cls, hook: Webhook) -> NewWebhookOut:
        return cls(**WebhookOut.of(hook).model_dump(), secret=hook.secret)


class SubmittedJobOut(JobOut):
    webhooks: list[NewWebhookOut] = Field(
        default_factory=list,
        description="The job's own subscriptions (`notify.webhooks`) with their signing "
        "secrets: in the response to the submit that created the job, and only there.",
    )

    parameters: ParametersOut | None = Field(
        default=None,
        description="The model's parameters, total and trainable, counted at submit (null:"
        " not counted).",
    )

    @classmethod
    def created(
        cls, document: bytes, hooks: list[Webhook], parameters: ParametersOut | None = None
    ) -> SubmittedJobOut:
        """The answer to a submit or a clone: the job's document (as `GET /jobs/{id}`
        answers it), its own subscriptions' secrets and the parameter count."""
        job = cls.model_validate_json(document)
        return job.model_copy(
            update={"webhooks": [NewWebhookOut.of(h) for h in hooks], "parameters": parameters}
        )


class DeliveryOut(BaseModel):
    """One event for one subscription (`GET /jobs/{id}/deliveries`)."""

    id: uuid.UUID = Field(description="The `webhook-id` header is `msg_` + this.")
    webhook_id: uuid.UUID
    url: str
    event: str
    status: str = Field(description="`pending`, `delivered` or `failed` (retries given up).")
    attempts: int
    last_status_code: int | None = Field(description="The receiver's last answer's status.")
    last_error: str | None = Field(description="Why the last attempt failed.")
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When it is tried next (pending).")
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, delivery: WebhookDelivery, event: str, url: str) -> DeliveryOut:
        return cls(
            id=delivery.id,
            webhook_id=delivery.webhook_id,
            url=url,
            event=event,
            status=delivery.status,
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            last_attempt_at=delivery.last_attempt_at,
            next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
            created_at=delivery.created_at,
            finished_at=delivery.finished_at,
        )
