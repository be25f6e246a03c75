"""The error responses routes document in the OpenAPI document, written once.

Every error body is an `ErrorOut` (api/errors.py makes them). A route lists the statuses it
can answer: `errors(401, 404, 422, 503)`, with a route's own wording where the shared one
does not fit, keyed `s` + the status: `errors(401, 422, s404="No such key")`.
"""

from __future__ import annotations

from typing import Any

from api.schemas import ErrorOut

Responses = dict[int | str, dict[str, Any]]

_DESCRIPTIONS: dict[int, str] = {
    401: "No API key, or an unknown or revoked one",
    403: "Not an admin key",
    404: "No such job",
    409: "The job is not in a state that allows it",
    422: "The request names the problem in `detail`",
    429: "Too many event streams and log followers open (Retry-After)",
    503: "The database is unreachable",
}

# The statuses almost every job route can answer.
JOB_ROUTE = (401, 404, 422, 503)


def errors(*codes: int, **described: str) -> Responses:
    """`codes` with the shared descriptions, and `described` (`s409="The job has not
    finished"`) with a route's own."""
    out: Responses = {
        code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes
    }
    for key, description in described.items():
        out[int(key.removeprefix("s"))] = {"model": ErrorOut, "description": description}
    return out


def json_errors(*codes: int, **described: str) -> Responses:
    """The same, for a route whose own media type is not JSON (a stream, a log, a file):
    its errors are documented as the JSON they are."""
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    return {
        code: {"description": spec["description"], "content": ref}
        for code, spec in errors(*codes, **described).items()
    }
