"""Live events: the Redis channel of a job and the shape of what is published on it.

Shared by the worker (publisher) and the API (SSE subscriber); no torch here.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Literal

EventType = Literal["status", "log", "eval", "summary", "end"]


def channel(job_id: uuid.UUID | str) -> str:
    return f"job:{job_id}"


def json_safe(value: Any) -> Any:
    """Non-finite floats become None (JSON and jsonb have no NaN); containers recurse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def encode(event: dict[str, Any]) -> str:
    return json.dumps(json_safe(event), separators=(",", ":"))
