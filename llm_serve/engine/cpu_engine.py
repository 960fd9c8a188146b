"""vLLM in one engine process on CPU, as vLLM's own server runs it.

Ray Serve LLM forces vLLM's multiprocessing executor on CPU. That puts the model in a worker process
of its own, beside the engine-core process that schedules it. Every decoding step then crosses a
shared-memory queue, and the engine core's busy-polling loop takes CPU from the worker's OpenMP threads.
On a machine with few cores that shows up as a higher time per output token. vLLM's own API server
runs a single-GPU or CPU model with the uniprocess executor instead: the model runs inside the engine
core. This engine does the same when the model needs exactly one worker (no tensor or pipeline
parallelism) on CPU. Larger layouts keep Ray Serve LLM's choice.
"""

from __future__ import annotations

import logging
from typing import Any

from llm_serve.engine.engine_load import EngineLoad, watch_scheduler
from llm_serve.engine.ray_llm import VLLMEngine

logger = logging.getLogger("llm_serve.engine")

UNIPROC = "uni"


class LoadReportingEngine(VLLMEngine):
    """Ray Serve LLM's vLLM engine, keeping the scheduler's last report in `self.load`."""

    load: EngineLoad | None = None  # set when the engine starts

    def _start_async_llm_engine(self, vllm_engine_args: Any, vllm_engine_config: Any, placement_group: Any) -> Any:
        client = super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)
        self.load = EngineLoad()
        if not watch_scheduler(client, self.load):
            logger.warning("the engine keeps no stats (disable_log_stats): it reports no load to the autoscaler")
        return client


class SingleProcessCpuEngine(LoadReportingEngine):
    def _start_async_llm_engine(self, vllm_engine_args: Any, vllm_engine_config: Any, placement_group: Any) -> Any:
        parallel = vllm_engine_config.parallel_config
        if parallel.world_size == 1 and parallel.distributed_executor_backend != UNIPROC:
            logger.info("one CPU worker: running the model in the engine core (uniprocess executor)")
            parallel.distributed_executor_backend = UNIPROC
        return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)
