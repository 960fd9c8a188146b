"""An API pool: a model served by an upstream API, called the way the router calls an engine pool.

The dispatch stage calls an engine pool through a Serve handle: `pool.chat.remote(body, info)` gives
an async iterator of the engine's results (one response object, or batches of SSE strings), and
`pool.check_health.remote()` is what the breaker probes. `UpstreamPool` offers that same surface
over HTTP, so fallbacks, the breaker, coalescing, caching, pricing and the stream relay treat an API
pool and an engine pool alike, and a fallback can cross from one kind to the other.

Per call: up to `max_retries` retries while nothing has been received (a connection error, a
timeout, a 429 or a 5xx; the wait doubles from `retry_backoff_s`, or is the upstream's Retry-After
when it asks for no more than `max_retry_wait_s`), then an `UpstreamError` the dispatch stage maps
to the client's status. Once output has started nothing is retried: a stream that breaks ends with
an error event, as an engine's does. The retry loop is written here, not taken from a retry
library, because the decision needs the response itself (its status and Retry-After) and must stop
at the first byte of output.

The key is read from the environment of the router's process when the pool is built and lives only
in the HTTP client's headers: it is never logged (httpx's request log is silenced below INFO-level
noise, and our own lines carry the model id, not the URL), never put on a span, and redacted from
any upstream message passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llm_serve.config import ModelConfig, ProviderConfig
from llm_serve.router.providers import anthropic_wire, openai_wire
from llm_serve.router.providers.errors import UpstreamError, busy, from_status, parse_retry_after, unreachable
from llm_serve.sse import DONE_EVENT, sse
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.router")
# httpx logs every request line at INFO; a URL can carry an account or deployment name, so keep it out.
logging.getLogger("httpx").setLevel(logging.WARNING)

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# Errors raised before the request left this process: safe to retry, nothing was generated or billed. A
# read timeout or a broken response may follow a generation the upstream bills, so those are not retried.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
HEALTH_PROMPT = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


class UpstreamResponse:
    """A non-streamed upstream answer in the shape the router reads an engine's: `model_dump()` and
    `usage`."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return json.loads(json.dumps(self.payload))  # a copy: the cache and the client may both change it

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.payload.get("usage")
        return usage if isinstance(usage, dict) else None


class UpstreamCall:
    """One upstream call's results: an async iterator with `cancel()`, as a Serve response stream has.

    Closing a bare async generator right after the task stepping it was cancelled fails ("aclose(): the
    generator is already running") while its cleanup still awaits the connection's close; `cancel`
    waits for that step to end first.
    """

    CLOSE_WAIT_S = 5.0

    def __init__(self, results: AsyncIterator[Any]) -> None:
        self._results = results
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> UpstreamCall:
        return self

    def __anext__(self) -> Any:
        return self._results.__anext__()

    def cancel(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        deadline = time.monotonic() + self.CLOSE_WAIT_S
        while getattr(self._results, "ag_running", False) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await self._results.aclose()  # type: ignore[attr-defined]


class _Method:
    """`pool.chat` / `pool.completions` / `pool.check_health`: `.remote(...)` as on a Serve handle."""

    def __init__(self, pool: UpstreamPool, route: str) -> None:
        self.pool, self.route = pool, route

    def remote(self, *args: Any) -> Any:
        if self.route == "check_health":
            return self.pool.probe()
        return self.pool.call(self.route, *args)


class UpstreamPool:
    def __init__(self, model: ModelConfig, request_timeout_s: float) -> None:
        assert model.provider is not None
        self.model_id = model.id
        self.provider: ProviderConfig = model.provider
        self.upstream_model = self.provider.model or model.id
        self.request_timeout_s = request_timeout_s
        self.base_url = self.provider.url()
        self.key_env = self.provider.api_key_env
        # Stripped: a key mounted from a secret file often ends in a newline, which no HTTP header may hold.
        self._key = os.environ.get(self.key_env, "").strip() if self.key_env else ""
        self._client: httpx.AsyncClient | None = None
        self.chat = _Method(self, "chat")
        self.completions = _Method(self, "completions")
        self.check_health = _Method(self, "check_health")

    def options(self, **_: Any) -> UpstreamPool:
        """Serve handle options (stream, multiplexed model id) mean nothing to an API pool."""
        return self

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self._key,) if self._key else ()

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.provider.headers}
        if self._key:
            name = self.provider.key_header()
            headers[name] = f"Bearer {self._key}" if name == "authorization" else self._key
        if self.provider.kind == "anthropic":
            headers["anthropic-version"] = self.provider.anthropic_version
        return headers

    def client(self) -> httpx.AsyncClient:
        """One connection pool per router replica, opened in its event loop on first use."""
        if self._client is None:
            p = self.provider
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers(),
                params=p.query or None,
                timeout=httpx.Timeout(p.timeout_s, connect=p.connect_timeout_s),
                limits=httpx.Limits(max_connections=p.max_connections, max_keepalive_connections=p.max_connections),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- calls ---------------------------------------------------------------------------------

    def _request(self, route: str, body: Any) -> tuple[str, dict[str, Any]]:
        if self.key_env and not self._key:
            raise UpstreamError(
                503,
                f"the upstream API of '{self.model_id}' has no key: ${self.key_env} is not set in the router's "
                "environment",
                code="upstream_not_configured",
                counts=False,
            )
        if self.provider.kind == "anthropic":
            if route != "chat":
                raise UpstreamError(
                    400,
                    f"the model '{self.model_id}' is served by an Anthropic API, which has no text completions; "
                    "use /v1/chat/completions",
                    code="unsupported_endpoint",
                    counts=False,
                    falls_back=False,
                )
            return "/messages", anthropic_wire.upstream_body(body, self.provider, self.upstream_model)
        path = "/chat/completions" if route == "chat" else "/completions"
        return path, openai_wire.upstream_body(route, body, self.provider, self.upstream_model)

    def call(self, route: str, body: Any, info: Any = None) -> UpstreamCall:
        """The call's results, as an engine's: [one response] or batches of SSE events."""
        return UpstreamCall(self._results(route, body, info))

    async def _results(self, route: str, body: Any, info: Any) -> AsyncIterator[Any]:
        path, payload = self._request(route, body)
        stream = bool(payload.get("stream"))
        carried = dict(getattr(info, "headers", None) or {})
        # Started, not made current: this generator resumes in whichever task reads it next.
        span = tracing.tracer().start_span("llm_serve.provider.call", context=tracing.context_from(carried))
        # The trace continues into a self-hosted upstream; a third party's API gets no trace ids or baggage.
        trace_headers = (
            {k: v for k, v in carried.items() if k in TRACE_HEADERS}
            if self.provider.kind == "openai_compatible"
            else {}
        )
        span.set_attribute("gen_ai.system", self.provider.kind)
        span.set_attribute("gen_ai.request.model", self.upstream_model)
        span.set_attribute("server.address", httpx.URL(self.base_url).host or "")
        try:
            response = await self._send(path, payload, stream, trace_headers, span)
            span.set_attribute("http.response.status_code", response.status_code)
            try:
                if not stream:
                    yield UpstreamResponse(self._answer(_json_or_none(response)))
                    return
                async for batch in self._stream(response):
                    yield batch
            finally:
                await response.aclose()
        except UpstreamError as exc:
            span.set_attribute("error.type", exc.code)
            raise
        finally:
            span.end()

    async def _send(
        self, path: str, payload: dict[str, Any], stream: bool, headers: dict[str, str], span: Any
    ) -> httpx.Response:
        """The upstream's 2xx response (headers read, and the body too unless it streams), after retries."""
        client, p = self.client(), self.provider
        # A non-streamed answer's first byte is the whole answer: it may take the request's whole time.
        read = p.timeout_s if stream else max(p.timeout_s, self.request_timeout_s)
        timeout = httpx.Timeout(read, connect=p.connect_timeout_s, pool=p.connect_timeout_s)
        attempt = 0
        while True:
            attempt += 1
            span.set_attribute("llm_serve.provider.attempts", attempt)
            wait: float | None = None
            try:
                request = client.build_request("POST", path, json=payload, headers=headers, timeout=timeout)
                response = await client.send(request, stream=True)
            except httpx.PoolTimeout:
                raise busy(self.model_id) from None
            except NOT_SENT as exc:
                error = unreachable(self.model_id, exc)
            except httpx.HTTPError as exc:
                raise unreachable(self.model_id, exc) from None
            else:
                if response.status_code < 300:
                    if not stream:
                        await self._read(response)
                    return response
                body = await self._read(response)
                await response.aclose()
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                wait = parse_retry_after(response.headers.get("retry-after"))
                error = from_status(response.status_code, parsed, self.model_id, self.secrets, wait)
                if response.status_code not in RETRYABLE:
                    raise error
            if attempt > p.max_retries:
                raise error
            delay = p.retry_backoff_s * 2 ** (attempt - 1) if wait is None else wait
            if delay > p.max_retry_wait_s:
                raise error
            logger.info("upstream of %s: %s; retry %d in %.1f s", self.model_id, error.code, attempt, delay)
            await asyncio.sleep(delay)

    async def _read(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.HTTPError as exc:
            await response.aclose()
            raise unreachable(self.model_id, exc) from None

    def _answer(self, payload: Any) -> dict[str, Any]:
        """A 2xx body that is an answer, in chat shape; anything else (a proxy's page, an error object sent
        with 200) is the upstream's failure, never an answer to serve or cache."""
        anthropic = self.provider.kind == "anthropic"
        if isinstance(payload, dict) and "error" in payload:
            raise self._error_event(payload["error"])
        ok = isinstance(payload, dict) and (
            isinstance(payload.get("content"), list) if anthropic else isinstance(payload.get("choices"), list)
        )
        if not ok:
            raise UpstreamError(
                502,
                f"the upstream API of '{self.model_id}' answered 2xx without an answer in its body",
                code="upstream_error",
                counts=True,
            )
        if anthropic:
            return anthropic_wire.chat_completion(payload, self.model_id)
        return openai_wire.served_as(payload, self.model_id)

    async def _stream(self, response: httpx.Response) -> AsyncIterator[list[str]]:
        """The upstream's events as the router's SSE strings.

        An error before any output is raised (the dispatch stage maps it and may fall back); once output
        has been relayed it ends the stream as an error event, priced for what was relayed, as does a
        connection lost mid-stream or a stream that stops without its end mark: nothing is retried then,
        and a cut answer never looks complete.
        """
        started = False
        try:
            async for batch in self._events(response):
                if not started and batch and isinstance(batch[0], UpstreamError):
                    raise batch[0]
                if batch and isinstance(batch[0], UpstreamError):
                    yield [sse({"error": batch[0].client_error().body()["error"]})]
                    return
                started = True
                yield batch
                if batch and batch[-1] == DONE_EVENT:
                    return
            failure = f"the upstream API of '{self.model_id}' ended the stream before its end"
        except httpx.HTTPError as exc:
            if not started:
                raise unreachable(self.model_id, exc) from None
            failure = f"{unreachable(self.model_id, exc).message} mid-stream"
        yield [sse({"error": {"message": failure, "type": "api_error", "param": None, "code": "upstream_error"}})]

    async def _events(self, response: httpx.Response) -> AsyncIterator[list[Any]]:
        """Batches of SSE strings; an upstream error event as [UpstreamError]. Anthropic's message_start
        is held back until the next event, so an error right after it still counts as before any output."""
        chunks = anthropic_wire.ChunkStream(self.model_id) if self.provider.kind == "anthropic" else None
        held: list[str] = []
        async for kind, data in sse_events(response.aiter_lines()):
            if data == "[DONE]":
                yield [*held, DONE_EVENT]
                return
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            if "error" in payload or kind == "error":
                yield [self._error_event(payload.get("error", payload))]
                return
            if chunks is None:
                yield [sse(openai_wire.served_as(payload, self.model_id))]
                continue
            kind = kind or payload.get("type", "")
            out = held + [sse(c) for c in chunks.feed(kind, payload)]
            if kind == "message_stop":
                yield [*out, DONE_EVENT]
                return
            if kind == "message_start":
                held = out
            elif out:
                held = []
                yield out

    def _error_event(self, err: Any) -> UpstreamError:
        """An error the upstream sent in a 2xx body or stream (Anthropic's `overloaded_error`, ...), redacted."""
        message = err.get("message") if isinstance(err, dict) else err
        kind = str(err.get("type") or "") if isinstance(err, dict) else ""
        status = {"overloaded_error": 529, "rate_limit_error": 429, "invalid_request_error": 400}.get(kind, 502)
        return from_status(
            status, {"error": {"message": str(message or kind or "error")}}, self.model_id, self.secrets, None
        )

    # ---- health --------------------------------------------------------------------------------

    async def probe(self) -> None:
        """Raises unless the upstream answers: a GET of `health_path` below 500, or a one-token chat."""
        client = self.client()
        path = self.provider.health_path
        if path is not None:
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                raise unreachable(self.model_id, exc) from None
            if response.status_code >= 500 or response.status_code in (401, 403):
                raise from_status(response.status_code, None, self.model_id, self.secrets, None)
            return
        started = time.monotonic()
        async for _ in self._results("chat", {**HEALTH_PROMPT, "model": self.upstream_model}, None):
            pass
        logger.debug("upstream of %s answered its probe in %.2f s", self.model_id, time.monotonic() - started)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:  # not JSON (a proxy's HTML page): _answer reports it as the upstream's failure
        return None


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    """(event name, data) per server-sent event. SSE's framing is four rules (`event:`, `data:` lines
    joined by newlines, a blank line ends an event, `:` starts a comment), small enough to read here
    rather than add a dependency for it."""
    kind: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield kind, "\n".join(data)


def build_upstream_pools(models: list[ModelConfig], request_timeout_s: float) -> dict[str, UpstreamPool]:
    return {m.id: UpstreamPool(m, request_timeout_s) for m in models if m.provider is not None}
