"""Reject oversized bodies by their Content-Length before reading them (413, OpenAI format).

Bodies without a length (chunked) are still bounded: the handlers check the size they read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from llm_serve.router.errors import OpenAIError


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        length = -1
                    if length > self.max_bytes or length < 0:
                        message = (
                            f"request body of {length} bytes exceeds the limit of {self.max_bytes} bytes"
                            if length >= 0
                            else "invalid Content-Length header"
                        )
                        status = 413 if length >= 0 else 400
                        code = "request_too_large" if length >= 0 else "invalid_request"
                        await OpenAIError(status, message, code=code).response()(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
