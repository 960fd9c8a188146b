"""Admin routes: spend and the latest ledger rows, cache counters, and traces held in memory.

Only admin keys may call them. With auth off (no keys configured) every caller may, but only on a
loopback address: an endpoint open to the network never shows its ledger or traces without a key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from llm_serve.config import Config, is_loopback
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.coalesce import Coalescer
from llm_serve.router.context import REQUEST_ID
from llm_serve.router.errors import OpenAIError
from llm_serve.router.state import StateClient

MAX_ROWS = 1000
RECENT_TRACES = 20


class AdminRoutes:
    def __init__(self, config: Config, keys: KeyRing, state: StateClient, coalescer: Coalescer) -> None:
        self.config = config
        self.keys = keys
        self.state = state
        self.coalescer = coalescer
        self._span_collector: Any = None

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/admin/usage", self.usage, methods=["GET"])
        app.add_api_route("/admin/requests", self.requests, methods=["GET"])
        app.add_api_route("/admin/cache", self.cache, methods=["GET"])
        app.add_api_route("/admin/traces", self.traces, methods=["GET"])
        app.add_api_route("/admin/traces/{trace_id}", self.trace, methods=["GET"])

    def _admin(self, request: Request) -> Caller:
        caller = self.keys.caller(request.headers)
        if caller.key is None and not is_loopback(self.config.server.host):
            # Open to everyone who can connect (allow_unauthenticated): never the ledger or the traces.
            raise OpenAIError(
                403, "admin routes need an admin key when the endpoint is not on loopback", code="admin_only"
            )
        if caller.key is not None and not caller.key.admin:
            raise OpenAIError(403, f"The API key '{caller.name}' is not an admin key", code="admin_only")
        return caller

    async def usage(self, request: Request) -> dict[str, Any]:
        """Spend and tokens per key and model for a calendar period (UTC), from the ledger."""
        self._admin(request)
        period = request.query_params.get("period", "month")
        if period not in ("day", "month", "total"):
            raise OpenAIError(400, "period must be day, month or total", code="invalid_value", param="period")
        key = request.query_params.get("key")
        usage = await self.state.usage(period, key)
        # Business metrics beside the spend: per model, adapter and prompt version (router/feedback_store.py).
        usage["feedback"] = await self.state.feedback_summary(period, key)
        return usage

    async def requests(self, request: Request) -> dict[str, Any]:
        """The latest ledger rows (newest first); `key` and `request_id` narrow them (the id a caller got back
        in x-request-id finds its row however many came after it)."""
        self._admin(request)
        try:
            limit = min(MAX_ROWS, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise OpenAIError(400, "limit must be an integer", code="invalid_value", param="limit") from None
        request_id = request.query_params.get("request_id")
        if request_id is not None and not REQUEST_ID.match(request_id):
            raise OpenAIError(
                400, "request_id must be 1-64 of A-Z a-z 0-9 . _ : -", code="invalid_value", param="request_id"
            )
        rows = await self.state.recent(limit, request.query_params.get("key"), request_id)
        return {"object": "list", "data": rows}

    async def cache(self, request: Request) -> dict[str, Any]:
        """Exact-cache counters (shared) and this router replica's coalescing counters."""
        self._admin(request)
        return {
            "exact": await self.state.cache_stats(),
            "coalescing": {"engine_calls": self.coalescer.calls, "joined": self.coalescer.joined},
        }

    async def _collected(self, method: str, *args: Any) -> Any:
        """A call on the in-memory span collector: the cluster's actor, or this process' store without Ray
        (SpanStore and SpanCollector answer the same methods)."""
        tracing_config = self.config.telemetry.tracing
        if not (tracing_config.enabled and tracing_config.exporter == "memory"):
            raise OpenAIError(
                404,
                "traces are kept in memory only with telemetry.tracing.exporter: memory; "
                "otherwise look them up in your tracing backend",
                code="traces_unavailable",
            )
        import ray

        from llm_serve.telemetry.collector import collector_handle, local_store

        if not ray.is_initialized():
            return getattr(local_store(tracing_config.memory_max_spans), method)(*args)
        if self._span_collector is None:  # a GCS lookup: once, and off the event loop
            self._span_collector = await asyncio.to_thread(collector_handle, tracing_config.memory_max_spans)
        return await getattr(self._span_collector, method).remote(*args)

    async def traces(self, request: Request) -> dict[str, Any]:
        """The most recent trace ids held by the in-memory span collector (newest first)."""
        self._admin(request)
        return {"object": "list", "data": await self._collected("recent_traces", RECENT_TRACES)}

    async def trace(self, trace_id: str, request: Request) -> dict[str, Any]:
        """Every span of one trace, from every process, oldest first (the in-memory collector)."""
        self._admin(request)
        spans = await self._collected("trace", trace_id.lower())
        if not spans:
            raise OpenAIError(404, f"no spans of trace '{trace_id}' are held", code="trace_not_found")
        return {"trace_id": trace_id.lower(), "spans": spans}
