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
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from llm_serve.config import ModelConfig, ProviderConfig
from llm_serve.router.providers import anthropic_wire, openai_wire
from llm_serve.router.providers.errors import UpstreamError, from_status, parse_retry_after, redact, unreachable
from llm_serve.sse import DONE_EVENT, sse
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.router")
# httpx logs every request line at INFO; a URL can carry an account or deployment name, so keep it out.
logging.getLogger("httpx").setLevel(logging.WARNING)

RETRYABLE = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
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
        self._key = os.environ.get(self.key_env, "") if self.key_env else ""
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

    def call(self, route: str, body: Any, info: Any = None) -> AsyncIterator[Any]:
        """The call's results, as an engine's: [one response] or batches of SSE events."""
        return self._results(route, body, info)

    async def _results(self, route: str, body: Any, info: Any) -> AsyncIterator[Any]:
        path, payload = self._request(route, body)
        stream = bool(payload.get("stream"))
        trace_headers = dict(getattr(info, "headers", None) or {})
        # Started, not made current: this generator resumes in whichever task reads it next.
        span = tracing.tracer().start_span("llm_serve.provider.call", context=tracing.context_from(trace_headers))
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
        """The upstream's 2xx response (headers read, body not yet for a stream), after retries."""
        client, p = self.client(), self.provider
        attempt = 0
        while True:
            attempt += 1
            span.set_attribute("llm_serve.provider.attempts", attempt)
            try:
                request = client.build_request("POST", path, json=payload, headers=headers)
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                error, wait = unreachable(self.model_id, exc), None
            else:
                if response.status_code < 300:
                    if not stream:
                        await response.aread()
                    return response
                body = await response.aread()
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

    def _answer(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise UpstreamError(
                502,
                f"the upstream API of '{self.model_id}' sent a body that is not a JSON object",
                code="upstream_error",
                counts=True,
            )
        if self.provider.kind == "anthropic":
            return anthropic_wire.chat_completion(payload, self.model_id)
        return openai_wire.served_as(payload, self.model_id)

    async def _stream(self, response: httpx.Response) -> AsyncIterator[list[str]]:
        """The upstream's events as the router's SSE strings; a connection lost mid-stream ends it with an
        error event (output has started: nothing is retried), which the relay prices and reports."""
        try:
            async for batch in self._events(response):
                yield batch
        except httpx.HTTPError as exc:
            error = unreachable(self.model_id, exc)
            yield [sse({"error": {"message": f"{error.message} mid-stream", "type": "api_error", "code": error.code}})]

    async def _events(self, response: httpx.Response) -> AsyncIterator[list[str]]:
        chunks = anthropic_wire.ChunkStream(self.model_id) if self.provider.kind == "anthropic" else None
        async for kind, data in sse_events(response.aiter_lines()):
            if data == "[DONE]":
                yield [DONE_EVENT]
                return
            try:
                payload = json.loads(data)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            if "error" in payload or kind == "error":  # the upstream's words, without anything key-shaped
                payload = {"error": self._redacted_error(payload.get("error", payload))}
                yield [sse(payload)]
                continue
            if chunks is not None:
                out = [sse(c) for c in chunks.feed(kind or payload.get("type", ""), payload)]
                if kind == "message_stop" or payload.get("type") == "message_stop":
                    yield [*out, DONE_EVENT]
                    return
                if out:
                    yield out
                continue
            yield [sse(openai_wire.served_as(payload, self.model_id))]

    def _redacted_error(self, err: Any) -> dict[str, Any]:
        message = err.get("message") if isinstance(err, dict) else err
        kind = err.get("type") if isinstance(err, dict) else None
        return {
            "message": redact(str(message or "upstream error"), self.secrets),
            "type": kind or "api_error",
            "code": "upstream_error",
        }

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
