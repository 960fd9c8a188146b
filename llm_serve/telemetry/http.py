"""The ingress span: one SERVER span per HTTP request, the root (or child) of the request's trace.

A pure ASGI middleware rather than a FastAPI dependency, because a streamed response outlives the
route handler: the span must end when the last body chunk is sent, not when the handler returns.
An incoming `traceparent` makes the span its child (the caller's trace continues through us); the
trace id goes back in `x-trace-id` so a user can quote it and an operator can find the trace.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from llm_serve.telemetry import tracing

_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class TracingMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :] or "/"
        if path in _UNTRACED:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        method = scope.get("method", "GET")
        span = tracing.tracer().start_span(
            method,  # renamed after routing, by the matched route's template (low-cardinality names)
            context=tracing.context_from(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": path,
                "url.scheme": scope.get("scheme", "http"),
                "user_agent.original": headers.get("user-agent", ""),
            },
        )
        trace_id = tracing.trace_id_of(span)
        # For the 500 handler, which runs outside this middleware (Starlette's ServerErrorMiddleware).
        scope.setdefault("state", {})["trace_id"] = trace_id
        token = otel_context.attach(trace.set_span_in_context(span))
        ended = False

        def end(status: int | None = None) -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            # The matched route's template names the span; unmatched paths (scanners) stay nameless.
            template = getattr(scope.get("route"), "path", None)
            span.update_name(f"{method} {template}" if template else method)
            if template:
                span.set_attribute("http.route", template)
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute("error.type", str(status))
            span.end()

        status_code: int | None = None

        async def send_traced(message: dict[str, Any]) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message.get("status", 0))
                if trace_id:
                    message = {**message, "headers": [*message.get("headers", []), _header(trace_id)]}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                end(status_code)

        try:
            await self.app(scope, receive, send_traced)
        except BaseException as exc:
            span.record_exception(exc)
            end(status_code or 500)
            raise
        finally:
            otel_context.detach(token)
            end(status_code)


def _header(trace_id: str) -> tuple[bytes, bytes]:
    return tracing.TRACE_ID_HEADER.encode(), trace_id.encode()
