"""How a failed job's exception is described: type, message, traceback and a reason.

The reason tells a user where to look: `oom` (reduce the batch), `non_finite_loss` (lower the
learning rate), `disk` (the job directory outgrew its budget), `data` (the dataset), `config`
(the spec), `timeout`, `worker_lost`, or
`internal` (anything else; the traceback says more).
"""

from __future__ import annotations

import traceback
from typing import Any, Literal

Reason = Literal[
    "oom", "disk", "non_finite_loss", "data", "config", "worker_lost", "timeout", "internal"
]


class JobError(Exception):
    """An error the runner raises itself, with its reason known."""

    reason: Reason = "internal"


class DataError(JobError):
    reason: Reason = "data"


class ConfigError(JobError):
    reason: Reason = "config"


class NonFiniteLossError(JobError):
    reason: Reason = "non_finite_loss"

    def __init__(self, step: int, values: dict[str, Any]) -> None:
        super().__init__(f"non-finite loss or grad norm at step {step}: {values}")
        self.step = step


# Messages of out-of-memory errors raised as plain RuntimeError (older torch, other
# backends, the CPU allocator); the same families `accelerate` retries with a smaller batch.
_OOM_MESSAGES = (
    "out of memory",  # CUDA, HIP, XPU, MPS ("MPS backend out of memory")
    "can't allocate memory",  # DefaultCPUAllocator
    "allocation failed",  # HPU
)


def is_oom(exc: BaseException) -> bool:
    """`torch.OutOfMemoryError` (CUDA), an allocator's RuntimeError, or a host MemoryError."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _OOM_MESSAGES)


def describe(exc: BaseException, *, phase_reason: Reason = "internal") -> dict[str, Any]:
    """The `error` object stored on the job. `phase_reason` is the reason implied by where
    the exception happened (building the dataset -> data, the model or arguments -> config);
    an OOM or an error that knows its own reason takes precedence."""
    if is_oom(exc):
        reason: Reason = "oom"
    elif isinstance(exc, JobError):
        reason = exc.reason
    else:
        reason = phase_reason
    error: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "reason": reason,
    }
    if isinstance(exc, NonFiniteLossError):
        error["step"] = exc.step
    return error
