"""A scriptable upstream API on 127.0.0.1, for what a real provider will not do on demand.

A real server (vLLM's own, in the integration tests) answers everything it can; what no real server
does when asked (a 429 with Retry-After, a 5xx, a flaky first attempt, an outage and a recovery) this
one does, over real HTTP in a thread. With `proxy` set it forwards OpenAI and Anthropic calls to a
real server, so its "healthy" answers are real ones. It records each call's path, headers and body.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Script:
    mode: str = "ok"  # ok | 429 | 500 | 503 | down (every path 503, /models too)
    fail_first: int = 0  # the next N calls fail with `fail_status` before the mode applies
    fail_status: int = 503
    retry_after: str | None = None
    proxy: str | None = None  # a real server's base URL (without /v1) the healthy calls go to
    error_message: str | None = None  # the text of a failure's error (default: "stub says <status>")
    cut_after: int | None = None  # a stream's connection is dropped after this many events
    garbage: bool = False  # a 200 whose body is not JSON (a proxy's error page)
    truncate: int | None = None  # a stream ends cleanly after this many events, without its end mark
    error_in_200: dict[str, Any] | None = None  # an error object sent with status 200 (in a stream: after its start)
    calls: list[dict[str, Any]] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OPENAI_ANSWER = {
    "id": "chatcmpl-stub",
    "object": "chat.completion",
    "created": 1,
    "model": "upstream-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "stub answer"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
}
ANTHROPIC_ANSWER = {
    "id": "msg_stub",
    "type": "message",
    "role": "assistant",
    "model": "upstream-model",
    "content": [{"type": "text", "text": "stub answer"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 3},
}


def _openai_stream() -> list[str]:
    head = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": "upstream-model"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "stub "}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "answer"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}},
    ]
    return [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]


def _anthropic_stream() -> list[str]:
    def event(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    message = {**ANTHROPIC_ANSWER, "content": [], "stop_reason": None, "usage": {"input_tokens": 7, "output_tokens": 1}}
    return [
        event("message_start", {"message": message}),
        event("ping", {}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "stub "}}),
        event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "answer"}}),
        event("content_block_stop", {"index": 0}),
        event("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                                    "name": "get_weather", "input": {}}}),
        event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
        event("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}}),
        event("content_block_stop", {"index": 1}),
        event("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                "usage": {"output_tokens": 9}}),
        event("message_stop", {}),
    ]  # fmt: skip


class UpstreamStub:
    def __init__(self) -> None:
        self.script = Script()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UpstreamStub:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the stub upstream did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def set(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self.script, name, value)

    def _failure(self) -> Response | None:
        s = self.script
        status = None
        if s.fail_first > 0:
            s.fail_first -= 1
            status = s.fail_status
        elif s.mode != "ok":
            status = 503 if s.mode == "down" else int(s.mode)
        if status is None:
            return None
        headers = {"retry-after": s.retry_after} if s.retry_after is not None else None
        message = s.error_message or f"stub says {status}"
        body = {"error": {"message": message, "type": "server_error", "code": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def _models(self, _request: Request) -> Response:
        if self.script.mode == "down":
            return JSONResponse({"error": {"message": "down"}}, status_code=503)
        return JSONResponse({"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

    async def _record(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        self.script.calls.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        return body

    async def _forward(self, request: Request, body: dict[str, Any]) -> Response:
        assert self.script.proxy is not None
        client = httpx.AsyncClient(base_url=self.script.proxy, timeout=300)
        auth = {k: v for k, v in request.headers.items() if k in ("authorization", "x-api-key", "anthropic-version")}
        upstream = await client.send(
            client.build_request("POST", request.url.path, json=body, headers=auth), stream=True
        )

        async def relay() -> Any:
            try:
                async for piece in upstream.aiter_raw():
                    yield piece
            finally:
                await upstream.aclose()
                await client.aclose()

        kind = upstream.headers.get("content-type", "application/json")
        return StreamingResponse(relay(), status_code=upstream.status_code, media_type=kind)

    async def _openai(self, request: Request) -> Response:
        return await self._answer(request, _openai_stream, OPENAI_ANSWER)

    async def _anthropic(self, request: Request) -> Response:
        return await self._answer(request, _anthropic_stream, ANTHROPIC_ANSWER)

    async def _answer(self, request: Request, stream: Any, answer: dict[str, Any]) -> Response:
        """The scripted failure, the real server's answer (proxy), or the canned one in the API's shape."""
        body = await self._record(request)
        failure = self._failure()
        if failure is not None:
            return failure
        if self.script.proxy:
            return await self._forward(request, body)
        if self.script.garbage:
            return Response("<html>bad gateway</html>", media_type="text/html")
        events = stream()
        if self.script.error_in_200 is not None:
            if not body.get("stream"):
                return JSONResponse({"type": "error", "error": self.script.error_in_200})
            error = {"type": "error", "error": self.script.error_in_200}
            events = [events[0], f"event: error\ndata: {json.dumps(error)}\n\n"]
        if self.script.truncate is not None:
            events = events[: self.script.truncate]
        if body.get("stream"):
            return StreamingResponse(self._events(events), media_type="text/event-stream")
        return JSONResponse(answer)

    async def _events(self, events: list[str]) -> Any:
        for i, event in enumerate(events):
            if self.script.cut_after is not None and i >= self.script.cut_after:
                raise ConnectionResetError("the stub drops the stream")  # uvicorn closes the connection
            yield event
