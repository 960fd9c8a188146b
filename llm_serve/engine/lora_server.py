"""Ray Serve LLM's LLMServer, loading LoRA adapters from our adapter registry.

LLMServer already multiplexes adapters (Serve's model multiplexing routes `base:adapter` requests
to replicas that hold the adapter and evicts the least recently used past a bound per replica) and
hands them to vLLM at first use; only its loader insists on cloud storage. This subclass swaps the
loader for the registry's: a local directory or a pyarrow filesystem URI, copied to a per-node
cache when remote. Nothing restarts when a new adapter is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from ray import serve

from llm_serve.adapters import AdapterRegistry
from llm_serve.engine.pool import ENGINE_CPUS_ENV, ENGINE_NICE_ENV
from llm_serve.engine.ray_llm import DiskMultiplexConfig, LLMServer
from llm_serve.sse import FINISH_MARK, USAGE_MARK, event_payload, finish_reasons
from llm_serve.telemetry import genai, tracing

logger = logging.getLogger(__name__)


def _run_on_engine_cpus() -> None:
    """Move this replica process onto the CPUs its config names (EngineConfig.cpu_affinity).

    At import, because the replica imports this module first and vLLM's own imports and the engine-core
    process it spawns (which inherits the mask) come after; a no-op where the variable is not set (the
    driver that builds the application imports this module too).
    """
    cpus = os.environ.get(ENGINE_CPUS_ENV)
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def set_process_nice(nice: int, tasks: Path = Path("/proc/self/task")) -> int:
    """Give every thread of this process the niceness `nice`; the number of threads changed.

    Why every thread: on Linux niceness belongs to a thread, and a new thread takes its creator's. The replica
    already runs Ray's threads and its event loop when this module is imported, and vLLM's engine and the
    OpenMP threads it starts come from those, so setting the calling thread alone would miss them.
    """
    changed = 0
    for task in tasks.iterdir():
        with contextlib.suppress(ProcessLookupError, ValueError):  # a thread that has just ended
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            changed += 1
    return changed


def _run_at_engine_nice() -> None:
    """EngineConfig.cpu_nice, applied at import for the reason `_run_on_engine_cpus` gives."""
    value = os.environ.get(ENGINE_NICE_ENV)
    if not value or not hasattr(os, "setpriority"):
        return
    try:
        set_process_nice(int(value))
    except PermissionError:
        logger.warning(
            "engine.cpu_nice %s needs CAP_SYS_NICE, which this process lacks; keeping niceness %d",
            value,
            os.getpriority(os.PRIO_PROCESS, 0),
        )


_run_on_engine_cpus()
_run_at_engine_nice()

REGISTRY_KEY = "llm_serve_adapter_registry"
CACHE_KEY = "llm_serve_adapter_cache"
TRACING_KEY = "llm_serve_tracing"  # the telemetry.tracing section, when tracing is on
SINGLE_PROCESS_KEY = "llm_serve_cpu_single_process"  # see llm_serve/engine/cpu_engine.py


class AdapterNotFound(ValueError):
    """The model id names an adapter the registry does not hold (for this base model)."""


def split_adapter_id(model_id: str) -> tuple[str, str]:
    base, sep, name = model_id.rpartition(":")
    if not sep or not base or not name:
        raise AdapterNotFound(f"'{model_id}' is not of the form <base model>:<adapter>")
    return base, name


class RegistryLoraServer(LLMServer):
    def _get_default_engine_class(self) -> Any:
        accelerator = self._llm_config.accelerator_config
        if self._llm_config.experimental_configs.get(SINGLE_PROCESS_KEY) and getattr(accelerator, "kind", "") == "cpu":
            from llm_serve.engine.cpu_engine import SingleProcessCpuEngine

            return SingleProcessCpuEngine
        from llm_serve.engine.cpu_engine import LoadReportingEngine

        return LoadReportingEngine

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics: the engine's running and waiting requests and KV-cache
        use (engine_load.py), for `autoscaling.signal` other than `ongoing_requests` (autoscaling.py)."""
        load = getattr(getattr(self, "engine", None), "load", None)
        return load.metrics() if load is not None else {}

    def _init_multiplex_loader(self, model_downloader_cls: Any = None) -> None:
        mx_config = self._llm_config.multiplex_config()
        experimental = self._llm_config.experimental_configs
        if mx_config is None or REGISTRY_KEY not in experimental:
            super()._init_multiplex_loader(model_downloader_cls)
            return
        registry = AdapterRegistry(experimental[REGISTRY_KEY])
        cache_dir = Path(experimental.get(CACHE_KEY) or "/tmp/llm-serve-adapters")
        ids = itertools.count(1)  # vLLM wants a distinct integer id per adapter in this process

        async def _load_model(lora_model_id: str) -> DiskMultiplexConfig:
            base, name = split_adapter_id(lora_model_id)
            info = await asyncio.to_thread(registry.get, name)
            if info is None or info.base_model_id != base:
                raise AdapterNotFound(f"no adapter '{name}' for '{base}' in {registry.root}")
            path = await asyncio.to_thread(registry.local_path, info, cache_dir)
            return DiskMultiplexConfig(
                model_id=lora_model_id, max_total_tokens=None, local_path=path, lora_assigned_int_id=next(ids)
            )

        self._load_model = serve.multiplexed(max_num_models_per_replica=mx_config.max_num_models_per_replica)(
            _load_model
        )

    # ---- tracing -------------------------------------------------------------------------------
    # The engine's span is the child of the router's `chat {model}` span, whose context arrives as a
    # `traceparent` header in RawRequestInfo (the object LLMServer already carries across the handle
    # for request headers). A request without one (a health probe, tracing off at the router) is not
    # traced here, so the token path is untouched when tracing is off.

    async def chat(self, request: Any, raw_request_info: Any = None) -> Any:
        stream = await super().chat(request, raw_request_info)
        return self._traced(stream, "chat", request, raw_request_info)

    async def completions(self, request: Any, raw_request_info: Any = None) -> Any:
        stream = await super().completions(request, raw_request_info)
        return self._traced(stream, "completions", request, raw_request_info)

    def _traced(self, stream: Any, route: str, request: Any, raw_request_info: Any) -> Any:
        headers = getattr(raw_request_info, "headers", None)
        if not headers or "traceparent" not in headers:
            return stream
        if not tracing.setup_tracing(self._llm_config.experimental_configs.get(TRACING_KEY), "engine"):
            return stream
        parent = tracing.context_from(headers)
        if parent is None:
            return stream
        return traced_engine_stream(stream, route, request, parent)


async def traced_engine_stream(stream: Any, route: str, request: Any, parent: Any) -> AsyncIterator[Any]:
    """Relay the engine's output inside a SERVER span: first output as an event, usage at the end."""
    attributes = genai.request_attributes(route, request)
    with contextlib.suppress(Exception):  # outside a Serve replica (tests) there is no replica id
        attributes["llm_serve.replica"] = serve.get_replica_context().replica_id.unique_id
    span = tracing.tracer().start_span(
        genai.span_name(route, getattr(request, "model", None)),
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    first = True
    usage_event = id_event = None
    reasons: list[str] = []
    try:
        # Closing the engine's generator when we are closed (client gone) stops its generation too.
        closing = contextlib.aclosing(stream) if hasattr(stream, "aclose") else contextlib.nullcontext()
        async with closing:
            async for item in stream:
                if first:
                    span.add_event(genai.FIRST_TOKEN_EVENT)
                    first = False
                events = item if isinstance(item, list) else [item]
                for event in events:
                    if isinstance(event, str):
                        id_event = id_event or event
                        if USAGE_MARK in event:
                            usage_event = event
                        if FINISH_MARK.search(event):
                            reasons.extend(finish_reasons(event))
                    elif hasattr(event, "model_dump"):
                        payload = event.model_dump(mode="json")
                        if "error" in payload:
                            span.set_status(Status(StatusCode.ERROR))
                            span.set_attribute(genai.ERROR_TYPE, str((payload["error"] or {}).get("type") or "error"))
                        span.set_attributes(genai.response_attributes(payload))
                yield item
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute(genai.ERROR_TYPE, type(exc).__name__)
        raise
    finally:
        for event, take in ((id_event, _id_attributes), (usage_event, _usage_attributes)):
            if event is not None:
                span.set_attributes(take(event))
        if reasons:
            span.set_attribute(genai.FINISH_REASONS, reasons)
        span.end()


def _id_attributes(event: str) -> dict[str, Any]:
    payload = event_payload(event)
    return genai.response_attributes({"id": payload.get("id"), "model": payload.get("model")})


def _usage_attributes(event: str) -> dict[str, Any]:
    return genai.usage_attributes(event_payload(event).get("usage"))
