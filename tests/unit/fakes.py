"""Stand-ins for the router's unit tests: engine and embedder handles, canned engine output, helpers.

`FakeHandle` mimics a Serve DeploymentHandle (`.options(stream=True).chat.remote(body, raw)` returns
an async iterator, `check_health.remote()` an awaitable) and records every call, so a test can say
that a refused request never reached an engine. `Engine` is a stand-in pool with a delay or a
failure; `build` makes a router over stand-in pools with the real RouterState on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
from ray.serve.llm.openai_api_models import ChatCompletionResponse
from starlette.requests import ClientDisconnect

from llm_serve.config import parse_config
from llm_serve.prompts import PromptRegistry, default_prompts_dir
from llm_serve.rag.embedder import EmbeddingResult
from llm_serve.router.ingress import Router
from llm_serve.router.state import RouterState

MODEL = "tiny"
EMBED = "tiny-embed"
A, B = "model-a", "model-b"


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, body: Any = None, raw: Any = None) -> Any:
        if self.name != "check_health":
            self.handle.calls.append((self.name, body))
            self.handle.raw.append(raw)
        return self.handle.behaviour(self.name, body)


class FakeHandle:
    """Mimics a DeploymentHandle: `.options(stream=True).chat.remote(body, None)` -> async iterator."""

    def __init__(self, behaviour: Callable[[str, Any], Any]) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, Any]] = []
        self.raw: list[Any] = []  # the second argument of each call (RawRequestInfo: trace headers)

    def options(self, **_: Any) -> FakeHandle:
        return self

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self, name)


async def agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def chat_response(text: str = "hello", model: str = MODEL) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id="chatcmpl-1",
        model=model,
        created=1,
        choices=[{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    )


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def awaitable(value: Any) -> Any:
    return value


def assert_openai_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


KEYS = {"alice": "sk-alice", "bob": "sk-bob", "admin": "sk-admin"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def stream_items(text: str = "hi!", model: str = A) -> list[Any]:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model}
    return [
        [sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})],
        [sse({**head, "choices": [{"index": 0, "delta": {"content": text}}]})],
        [
            sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            sse({**head, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}}),
            "data: [DONE]\n\n",
        ],
    ]


class Engine:
    """A stand-in engine pool that counts calls, answers after `delay_s`, or fails."""

    def __init__(self, model: str, *, delay_s: float = 0.0, fail: bool = False) -> None:
        self.model, self.delay_s, self.fail = model, delay_s, fail
        self.handle = FakeHandle(self.behaviour)

    @property
    def calls(self) -> list[Any]:
        return self.handle.calls

    def behaviour(self, name: str, body: Any) -> Any:
        if name == "check_health":
            return awaitable(None)
        return self._results(body)

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("replica died")
        text = f"answer from {self.model}"
        if body.stream:
            for item in stream_items(text, self.model):
                yield item
        else:
            response = chat_response(text)
            response.model = self.model
            yield response


def build(
    extra: dict[str, Any] | None = None, *, engines: dict[str, Engine] | None = None, prompts: bool = False
) -> tuple[httpx.AsyncClient, dict[str, Engine], RouterState]:
    """A router over stand-in pools A and B (priced), the real RouterState on SQLite, and an httpx client."""
    app, engines, state = build_app(extra, engines=engines, prompts=prompts)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, engines, state


def build_app(
    extra: dict[str, Any] | None = None, *, engines: dict[str, Engine] | None = None, prompts: bool = False
) -> tuple[Any, dict[str, Engine], RouterState]:
    """The same router as `build`, as its bare ASGI app (for clients httpx cannot play)."""
    config = parse_config(
        {
            "models": [
                {"id": A, "source": "x", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
                {"id": B, "source": "x", "price": {"input_per_1m": 0.5, "output_per_1m": 1.0}},
            ],
            "embedding_models": [],
            **(extra or {}),
        }
    )
    engines = engines or {A: Engine(A), B: Engine(B)}
    state = RouterState(config)
    registry = None
    if prompts:  # the bundled registry, and the grounded-answer prompt retrieval needs
        bundled = PromptRegistry.load(default_prompts_dir())
        registry = {"registry": bundled.to_dict(), "rag": bundled.resolve("rag-grounded").prompt.to_dict()}
    router = Router(config, {m: e.handle for m, e in engines.items()}, {}, registry, state=state)
    return router.build_asgi_app(), engines, state


def keys_config(**alice: Any) -> dict[str, Any]:
    return {
        "auth": {
            "keys": [
                {"name": "alice", "key_sha256": sha(KEYS["alice"]), **alice},
                {"name": "bob", "key_sha256": sha(KEYS["bob"]), "models": [B]},
                {"name": "admin", "key_sha256": sha(KEYS["admin"]), "admin": True},
            ]
        }
    }


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def chat(model: str = A, question: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], **extra}


GREEDY = {"temperature": 0}


# ---- a router over one stand-in chat model and one stand-in embedder ------------------------------

STREAM = [
    [sse({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]})],
    [
        sse(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
            }
        ),
        sse(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
        ),
        "data: [DONE]\n\n",
    ],
]


def make_client(
    behaviour: Callable[[str, Any], Any], embed: Callable[[str, Any], Any] | None = None, **server: Any
) -> tuple[httpx.AsyncClient, FakeHandle]:
    config = parse_config(
        {
            "models": [{"id": MODEL, "source": "x"}],
            "server": server,
            "embedding_models": [{"id": EMBED, "max_inputs_per_request": 4}],
        }
    )
    handle = FakeHandle(behaviour)
    embedders = {EMBED: FakeHandle(embed or default_embed)}
    app = Router(config, {MODEL: handle}, embedders).build_asgi_app()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return client, handle


def default_behaviour(name: str, body: Any) -> Any:
    if name == "check_health":
        return awaitable(None)
    if body.stream:
        return agen(STREAM)
    return agen([chat_response()])


def default_embed(name: str, texts: Any) -> Any:
    if name == "check_health":
        return awaitable(None)
    vectors = np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)
    return awaitable(EmbeddingResult(vectors, [2] * len(texts)))


# ---- a client that goes away mid-response ---------------------------------------------------------


async def post_and_leave(app: Any, path: str, body: dict[str, Any], *, after_chunks: int) -> list[bytes]:
    """POST `body`, read `after_chunks` body chunks, then drop the connection (the next send fails, as a
    real server's does when the socket is gone). Returns the chunks read. httpx's ASGI transport cannot
    do this: closing its response early still lets the app run to the end."""
    chunks: list[bytes] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if gone.is_set():
            raise OSError("client went away")
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if len(chunks) >= after_chunks:
                gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    with contextlib.suppress(OSError, ClientDisconnect):
        await app(scope, receive, send)
    return chunks


# ---- a real HTTP server in this process ---------------------------------------------------------------


@contextlib.contextmanager
def serve_in_thread(app: Any, lifespan: str = "off") -> Iterator[str]:
    """`app` under uvicorn on 127.0.0.1 and a free port, in a thread, for clients that need a real URL
    (the eval CLI, `llm-serve promote`); yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
