"""A request body over the limit is answered 413 before it is parsed.

A pure ASGI middleware: a `Content-Length` over the limit is refused before a byte of the
body is read; a body without one (chunked) is counted as it streams in, and refused as soon
as it passes the limit. The body is never buffered here, so a huge upload costs the API
no memory.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

__all__ = ["BodyLimit"]


class _TooLarge(HTTPException):
    """Raised by `receive` once the body passes the limit. An HTTPException, so that the
    route's body parsing (which turns other errors into a 400) lets it through as a 413."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            await self._refuse(scope, receive, send, f"the body has {length:,} bytes")
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(413, self._detail(f"the body passed {self.max_bytes:,} bytes"))
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, f"the body passed {self.max_bytes:,} bytes")

    def _detail(self, what: str) -> str:
        return (
            f"{what}; the server accepts at most {self.max_bytes:,} bytes"
            " (TRAINDEPOT_MAX_BODY_BYTES)"
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        response = error_response(
            "body_too_large", self._detail(what), 413, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
