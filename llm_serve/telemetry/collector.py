"""The `memory` span exporter: every process' spans in one place, without an external backend.

An InMemorySpanExporter only sees its own process, but one request's spans are made in three or four
(proxy-side router, embedder, engine replica). So each process exports its finished spans as plain
dicts to one named, detached Ray actor, and the router reads a trace back from it for
`/admin/traces/{trace_id}`. It is meant for tests, demos and a quick look on a laptop; production
uses OTLP. Without Ray (unit tests), spans stay in a process-local buffer with the same interface.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

logger = logging.getLogger("llm_serve.telemetry")

COLLECTOR_NAME = "llm-serve-span-collector"
COLLECTOR_NAMESPACE = "llm-serve"


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """A span as JSON-able data: ids in hex, as trace UIs show them."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "timestamp_ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events
        ],
        "links": [format(link.context.trace_id, "032x") for link in span.links],
        "resource": {k: v for k, v in span.resource.attributes.items() if isinstance(v, str | int | float | bool)},
    }


class SpanStore:
    """A bounded buffer of span dicts, indexed by trace id (the oldest spans go first)."""

    def __init__(self, max_spans: int) -> None:
        self._spans: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_spans)
        self._lock = threading.Lock()

    def add(self, spans: list[dict[str, Any]]) -> int:
        with self._lock:
            self._spans.extend(spans)
            return len(self._spans)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return sorted((s for s in self._spans if s["trace_id"] == trace_id), key=lambda s: s["start_ns"] or 0)

    def recent_traces(self, limit: int) -> list[str]:
        with self._lock:
            seen: dict[str, None] = {}
            for span in reversed(self._spans):
                seen.setdefault(span["trace_id"], None)
                if len(seen) >= limit:
                    break
            return list(seen)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()


class SpanCollector:
    """The cluster-wide store, run as one named Ray actor (see `collector_handle`)."""

    def __init__(self, max_spans: int) -> None:
        self.store = SpanStore(max_spans)

    def add(self, spans: list[dict[str, Any]]) -> int:
        return self.store.add(spans)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        return self.store.trace(trace_id)

    def recent_traces(self, limit: int = 20) -> list[str]:
        return self.store.recent_traces(limit)

    def clear(self) -> None:
        self.store.clear()


_local_store: SpanStore | None = None


def local_store(max_spans: int = 20000) -> SpanStore:
    """The process-local buffer used when this process is not connected to Ray."""
    global _local_store
    if _local_store is None:
        _local_store = SpanStore(max_spans)
    return _local_store


def collector_handle(max_spans: int = 20000, create: bool = True) -> Any:
    """The collector actor (created on first use, detached so it outlives the replica that made it)."""
    import ray

    if not create:
        return ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE)
    actor_cls = ray.remote(num_cpus=0, max_concurrency=8)(SpanCollector)
    return actor_cls.options(
        name=COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(max_spans)


class CollectorExporter(SpanExporter):
    """Ships finished spans to the collector actor (fire and forget: export runs on the SDK's thread)."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self._actor: Any = None
        self._last: Any = None  # the previous batch's result: a dead collector shows up there

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        batch = [span_dict(s) for s in spans]
        try:
            import ray

            if not ray.is_initialized():
                local_store(self.max_spans).add(batch)
                return SpanExportResult.SUCCESS
            if self._last is not None:
                done, _ = ray.wait([self._last], timeout=0)
                if done:
                    self._last = None
                    ray.get(done[0])  # raises if the collector died: look it up (or recreate it) below
            if self._actor is None:
                self._actor = collector_handle(self.max_spans)
            self._last = self._actor.add.remote(batch)
            return SpanExportResult.SUCCESS
        except Exception as exc:  # a broken collector must never break serving
            logger.warning("span export to the collector failed (%s: %s)", type(exc).__name__, exc)
            self._actor = self._last = None
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._actor = None
