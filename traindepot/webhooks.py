"""The webhook contract (docs/architecture.md, "Webhooks"): the events a subscription can
ask for, the body of a delivery, the Standard Webhooks signature, and the retry schedule.

Signing is hand-written on purpose: it is three lines of the standard library (HMAC-SHA256,
base64), and the tests check it with the Standard Webhooks project's own verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
from typing import Any, Literal, get_args

EventType = Literal[
    "job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled", "job.requeued"
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
# A sweep's events (db/sweeps.py), for the tenant's subscriptions: a trial told to the
# study (its job ended), and the sweep's end. Their `data` is `{"sweep", "trial"}`.
SweepEventType = Literal["sweep.trial_ended", "sweep.succeeded", "sweep.cancelled"]
SWEEP_EVENT_TYPES: tuple[SweepEventType, ...] = get_args(SweepEventType)
# What `POST /webhooks/{id}/test` sends (never a job's status change).
TEST_EVENT = "webhook.test"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A subscription's signing secret: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}")), the key being the
    base64 after `whsec_`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt; `msg_id` is the same on every attempt."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def message_id(delivery_id: object) -> str:
    return f"msg_{delivery_id}"


def body(event_type: str, occurred_at: str, data: dict[str, Any]) -> bytes:
    """`{"type", "timestamp", "data"}`: `data` is the job as `GET /jobs/{id}` returned it
    when the event happened."""
    return json.dumps(
        {"type": event_type, "timestamp": occurred_at, "data": data}, separators=(",", ":")
    ).encode()


def retry_delay(
    failures: int, *, initial: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds before the next attempt after `failures` failed ones: exponential
    (`initial` x 2^(failures-1), at most `maximum`) with jitter (a random 50-100 % of it),
    so that receivers that come back are not hit by every sender at the same instant.

    Not tenacity: the schedule must survive the sender's restarts, so each delay is
    computed from the count stored in the delivery's row, not kept in a running loop."""
    base = min(maximum, initial * 2 ** max(0, failures - 1))
    return float(base * (0.5 + 0.5 * (rng or random).random()))
