"""A job's statuses, defined once: the `jobs.status` column, the API's `status` fields and
the live `status` events all use these (docs/architecture.md, "Statuses").

    queued -> running -> succeeded | failed        (the worker's terminal write)
    queued -> cancelled                            (the API, on cancel)
    running -> cancelling -> cancelled             (the API asks, the worker ends it)
    running | cancelling -> queued                 (the reaper, or a warm shutdown)
    running | cancelling -> failed | cancelled     (the reaper, when restarts are spent)

The OpenAPI schema of `JobStatus` lists the terminal ones under `x-terminal`: the dashboard
reads them there instead of keeping its own list.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema: dict[str, Any] = handler(core_schema)
        schema["x-terminal"] = [str(s) for s in cls if s in TERMINAL_STATUSES]
        return schema


# A job in one of these never changes again.
TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# A job in one of these has an attempt holding a lease.
ACTIVE_STATUSES = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})
