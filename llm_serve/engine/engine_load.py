"""The engine's own view of its load, kept in the replica for Serve's autoscaler.

Serve's default autoscaling signal is the number of requests a replica holds ("ongoing requests"). It does
not know what the engine does with them: how many vLLM runs at once, how many wait in its scheduler's
queue, or how full the KV cache is. vLLM's scheduler reports those with every step, to the stat loggers of
its `AsyncLLM`. Ray Serve LLM sends them on to Ray's metrics, which the replica cannot read back;
so the engine class (cpu_engine.py: LoadReportingEngine) keeps the latest report as it passes, and the
replica returns it from Serve's `record_autoscaling_stats` hook (lora_server.py), where an
`EngineSignalPolicy` (autoscaling.py) reads it.
"""

from __future__ import annotations

import time
from typing import Any

from llm_serve.engine.autoscaling import KV_CACHE, RUNNING, WAITING


class EngineLoad:
    """The last scheduler report of one engine: what vLLM ran, what waited, how full the KV cache was."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.updated_at: float | None = None

    def update(self, scheduler_stats: Any) -> None:
        self.running = int(getattr(scheduler_stats, "num_running_reqs", 0))
        self.waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0))
        self.kv_cache_usage = float(getattr(scheduler_stats, "kv_cache_usage", 0.0))
        self.updated_at = time.monotonic()

    def metrics(self) -> dict[str, float]:
        """What the replica reports to Serve; nothing before the engine's first report (the policy then
        falls back to ongoing requests)."""
        if self.updated_at is None:
            return {}
        return {RUNNING: float(self.running), WAITING: float(self.waiting), KV_CACHE: self.kv_cache_usage}


def watch_scheduler(engine_client: Any, load: EngineLoad) -> bool:
    """Let `load` see every scheduler report that `engine_client` (vLLM's AsyncLLM) hands its stat loggers.

    A wrapper around the manager's `record`, rather than a stat logger of our own, because AsyncLLM takes its
    loggers only at construction (which Ray Serve LLM does) and a logger must implement the whole logger
    interface; `record` is the one call every report goes through. False when the engine keeps no stats
    (`disable_log_stats`): then there is nothing to report.
    """
    manager = getattr(engine_client, "logger_manager", None)
    if manager is None:
        return False
    record = manager.record

    def recording(scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> Any:
        if scheduler_stats is not None:
            load.update(scheduler_stats)
        return record(scheduler_stats, iteration_stats, *args, **kwargs)

    manager.record = recording
    return True
