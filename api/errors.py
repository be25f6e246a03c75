"""One mapping from error types to HTTP statuses. Errors are `{"error", "detail"}` JSON,
never a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.database import Saturated
from traindepot.problems import SpecInvalid
from traindepot.store import StoreUnavailable

log = logging.getLogger(__name__)


class NotFound(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Conflict(Exception):
    pass


class Unauthorized(Exception):
    """No key, a malformed one, or one that is unknown or revoked: 401."""


class Forbidden(Exception):
    """A valid key that may not do this (a tenant key on an admin route): 403."""


class TooManyRequests(Exception):
    """A quota or a limit: 429 with `Retry-After`."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(Exception):
    pass


def error_response(
    error: str, detail: Any, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one shape of every error body: `{"error": <code>, "detail": <what is wrong>}`.
    A JSONResponse is an ASGI app too: the middlewares that refuse before a route runs
    (api/body_limit.py, api/stream_slots.py) send it with `await response(scope, receive,
    send)`."""
    return JSONResponse(
        {"error": error, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers
    )


def _clean(errors: Any) -> list[dict[str, Any]]:
    # pydantic errors carry the input and context objects; keep what names the problem.
    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        out.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "")})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response("invalid_request", _clean(exc.errors()), 422)

    @app.exception_handler(SpecInvalid)
    async def invalid_spec(request: Request, exc: SpecInvalid) -> JSONResponse:
        return error_response("invalid_request", [p.as_dict() for p in exc.problems], 422)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_response("not_found", f"{exc.what} not found", 404)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        return error_response("conflict", str(exc), 409)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        # Never echo the key: the message names the problem only.
        return error_response(
            "unauthorized", str(exc), 401, {"WWW-Authenticate": 'Bearer realm="traindepot"'}
        )

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error_response("forbidden", str(exc), 403)

    @app.exception_handler(TooManyRequests)
    async def too_many(request: Request, exc: TooManyRequests) -> JSONResponse:
        return error_response(
            "too_many_requests", str(exc), 429, {"Retry-After": str(exc.retry_after)}
        )

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("service unavailable: %s", exc)
        detail = (
            str(exc)
            if isinstance(exc, ServiceUnavailable | StoreUnavailable)
            else "the database is unreachable; retry shortly"
        )
        return error_response("service_unavailable", detail, 503, {"Retry-After": "5"})

    async def saturated(request: Request, exc: Exception) -> JSONResponse:
        # No log line per request here: under overload that would add to the load.
        message = "the API is at capacity; retry shortly"
        return error_response("service_unavailable", message, 503, {"Retry-After": "1"})

    app.add_exception_handler(StoreUnavailable, unavailable)
    app.add_exception_handler(Saturated, saturated)
    app.add_exception_handler(PoolTimeout, saturated)
    app.add_exception_handler(OperationalError, unavailable)
    app.add_exception_handler(DBAPIError, unavailable)
    app.add_exception_handler(ServiceUnavailable, unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8): a 422 at `body`.
            problem = {"loc": ["body"], "msg": "the body is not JSON text (UTF-8)"}
            return error_response("invalid_request", [{**problem, "type": "body_unreadable"}], 422)
        names = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error_response(names.get(exc.status_code, "http_error"), exc.detail, exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response("internal", "an internal error occurred; see the server log", 500)
