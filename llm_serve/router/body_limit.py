"""Bound request bodies: by Content-Length before reading, and while reading when there is none.

A declared length over the limit is refused at once (413, OpenAI's format). A chunked body has no
length to check, so the bytes are counted as they arrive and reading stops at the limit: a client
cannot make the router buffer more than `max_bytes` of one body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_serve.router.errors import OpenAIError, route_path


def too_large(length: int, max_bytes: int) -> OpenAIError:
    return OpenAIError(
        413, f"request body of {length} bytes exceeds the limit of {max_bytes} bytes", code="request_too_large"
    )


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_bytes = max_bytes
        self.per_path = per_path or {}  # routes with a limit of their own (file uploads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(route_path(scope), self.default_bytes)
        await self._limited(scope, receive, send, limit)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, max_bytes: int) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0:
                    error = OpenAIError(400, "invalid Content-Length header", code="invalid_request")
                    await error.response()(scope, receive, send)
                    return
                if length > max_bytes:
                    await too_large(length, max_bytes).response()(scope, receive, send)
                    return
                break
        received = 0

        async def counted() -> Message:
            """The app's receive: raises (answered as a 413 by the error handlers) past the limit."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise too_large(received, max_bytes)
            return message

        await self.app(scope, counted, send)
