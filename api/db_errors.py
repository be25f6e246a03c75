"""Database errors that are not an outage: a value or a constraint the database refused, or
a statement it could not run. None of them is "database unreachable" (503, api/errors.py):
a refused value or constraint is the request's problem (422, 409), anything else is a 500
with a generic body; the server log has the details, the client never sees SQL.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InternalError,
    NotSupportedError,
    ProgrammingError,
)

from api.errors import error_response

__all__ = ["install"]

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """Register after api.errors.install: these subclasses of DBAPIError then win over its
    503 handler (Starlette picks the handler of the most specific class)."""

    @app.exception_handler(DataError)
    async def refused_value(request: Request, exc: DataError) -> JSONResponse:
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            "invalid_request", "the database refused a value of this request as invalid", 422
        )

    @app.exception_handler(IntegrityError)
    async def refused_constraint(request: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("constraint violated on %s %s: %s", request.method, request.url.path, exc)
        return error_response("conflict", "the request conflicts with the stored data", 409)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response("internal", "an internal error occurred; see the server log", 500)

    for kind in (ProgrammingError, InternalError, NotSupportedError):
        app.add_exception_handler(kind, internal)
