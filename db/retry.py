"""The one retry policy for database work that must outlive an outage: exponential backoff
(0.5 s doubling, at most 5 s between tries). Calls that may give up retry connection-level
errors until a deadline (`retry_db`); a loop that must never die retries whatever it raises
(`retrying_forever`, the flusher's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

P = ParamSpec("P")
R = TypeVar("R")

# What a retry may cure: the database is unreachable or the connection dropped. Anything
# else (a constraint, a bug) is raised at once by `retry_db`.
TRANSIENT = (OperationalError, DBAPIError)
BACKOFF = wait_exponential(multiplier=0.5, max=5)


def retry_db(*, give_up_after_seconds: float) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry the decorated call through a database outage of up to `give_up_after_seconds`,
    then raise its last error."""

    def decorate(call: Callable[P, R]) -> Callable[P, R]:
        return retry(
            retry=retry_if_exception_type(TRANSIENT),
            wait=BACKOFF,
            stop=stop_after_delay(give_up_after_seconds),
            reraise=True,
        )(call)

    return decorate


def retrying_forever(*, on_failure: Callable[[BaseException], None]) -> Retrying:
    """Attempts (`for attempt in ...: with attempt: ...`) with the same backoff and no
    deadline, whatever the error: for a thread that must keep its data and never die.
    `on_failure` hears each error before the wait."""

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if error is not None:
            on_failure(error)

    return Retrying(
        retry=retry_if_exception_type(Exception), wait=BACKOFF, before_sleep=before_sleep
    )
