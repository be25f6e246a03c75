"""The one retry policy for database calls that must outlive an outage: exponential backoff
(0.5 s doubling, at most 5 s between tries) on connection-level errors, until a deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

P = ParamSpec("P")
R = TypeVar("R")

# What a retry may cure: the database is unreachable or the connection dropped. Anything
# else (a constraint, a bug) is raised at once.
TRANSIENT = (OperationalError, DBAPIError)


def retry_db(*, give_up_after_seconds: float) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry the decorated call through a database outage of up to `give_up_after_seconds`,
    then raise its last error."""

    def decorate(call: Callable[P, R]) -> Callable[P, R]:
        return retry(
            retry=retry_if_exception_type(TRANSIENT),
            wait=wait_exponential(multiplier=0.5, max=5),
            stop=stop_after_delay(give_up_after_seconds),
            reraise=True,
        )(call)

    return decorate
