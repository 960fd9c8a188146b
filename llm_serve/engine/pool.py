"""Build the vLLM engine pool for one configured model on top of Ray Serve LLM.

Ray Serve LLM's `LLMServer` already owns what a replica needs: starting vLLM's AsyncLLM with
placement groups for tensor/pipeline parallelism, LoRA multiplexing, request ids, health checks and
stream batching. We only translate our config into its `LLMConfig` and keep our own router in front.
Its CPU support needs telling (`accelerator_config` defaults to GPU) and vLLM's CPU knobs travel as
environment variables of the replica's runtime_env, which is why they are set here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_serve.config import AutoscalingConfig, EngineConfig, ModelConfig
from llm_serve.engine.autoscaling import policy_options
from llm_serve.engine.machine import choose_dtype
from llm_serve.engine.start_phase import PHASE_FILE_ENV

ENGINE_CPUS_ENV = "LLM_SERVE_ENGINE_CPUS"
ENGINE_NICE_ENV = "LLM_SERVE_ENGINE_NICE"

OFFLINE_ENV = {
    # No model hub is reachable on the machines we target: without these vLLM and transformers wait
    # ~40 s on the unreachable hub at start-up.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # vLLM's usage reporting would try the network too.
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def deployment_safe(model_id: str) -> str:
    """A model id as a Serve deployment name part (no '/', ':' or '.')."""
    return model_id.replace("/", "--").replace(":", "-").replace(".", "_")


# Ray Serve LLM's prefix-cache-aware replica choice, guarded against prompts without text
# (engine/request_router.py); it runs in the caller (our router's handles).
PREFIX_AWARE_ROUTER = "llm_serve.engine.request_router:SafePrefixCacheAffinityRouter"


def engine_deployment_name(model_id: str) -> str:
    return "engine-" + deployment_safe(model_id)


def phase_path(home: Path, model_id: str) -> Path:
    """Where a starting replica of this pool writes what it is doing (engine/start_phase.py)."""
    return home / "run" / f"{engine_deployment_name(model_id)}.phase"


def engine_kwargs(model: ModelConfig, model_source: str | None = None) -> dict[str, Any]:
    from llm_serve.models.quantize import needs_half_activations

    engine = model.engine
    half = model_source is not None and needs_half_activations(model_source)
    kwargs: dict[str, Any] = {
        "dtype": choose_dtype(engine.dtype, engine.accelerator, half_activations=half)[0],
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "gpu_memory_utilization": (
            engine.cpu_memory_utilization if engine.accelerator == "cpu" else engine.gpu_memory_utilization
        ),
    }
    if engine.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if model.lora.enabled:
        kwargs.update(enable_lora=True, max_loras=model.lora.max_loras, max_lora_rank=model.lora.max_lora_rank)
    if model.tools.parser is not None:
        kwargs.update(enable_auto_tool_choice=True, tool_call_parser=model.tools.parser)
    if model.tools.strict_level != "auto":
        kwargs["tool_strict_level"] = model.tools.strict_level
    template = model.tools.template_path()
    if template is not None:
        kwargs["chat_template"] = template  # Ray Serve LLM hands FrontendArgs fields to vLLM's chat serving
    kwargs.update(engine.extra_engine_args)
    return kwargs


def engine_env(model: ModelConfig, phase_file: str | None = None) -> dict[str, str]:
    env = dict(OFFLINE_ENV)
    if phase_file is not None:
        env[PHASE_FILE_ENV] = phase_file
    if model.engine.accelerator == "cpu":
        env.update(cpu_engine_env(model.engine))
    return env


def cpu_engine_env(engine: EngineConfig) -> dict[str, str]:
    """vLLM's CPU knobs, which are environment variables (shared with benchmarks/servers.py's same-args vLLM)."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(engine.kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": engine.cpu_omp_threads_bind,
    }
    if engine.compile_cache:
        env["VLLM_USE_AOT_COMPILE"] = "0"  # see EngineConfig.compile_cache
    if engine.cpu_affinity is not None:
        env[ENGINE_CPUS_ENV] = engine.cpu_affinity  # applied by engine/lora_server.py in the replica
    if engine.cpu_nice is not None:
        env[ENGINE_NICE_ENV] = str(engine.cpu_nice)  # likewise
    return env


def autoscaling_options(scaling: AutoscalingConfig, max_num_seqs: int | None = None) -> dict[str, Any]:
    """Serve's autoscaling_config from ours (shared by engine and embedder deployments); an engine pool
    (`max_num_seqs` given) may follow its engines' load instead of ongoing requests (engine/autoscaling.py)."""
    autoscaling: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
    }
    if scaling.initial_replicas is not None:
        autoscaling["initial_replicas"] = scaling.initial_replicas
    if scaling.signal != "ongoing_requests":
        if max_num_seqs is None:
            raise ValueError(f"autoscaling signal {scaling.signal!r} needs an engine pool")
        target = scaling.target_kv_cache_usage if scaling.signal == "kv_cache" else scaling.target_waiting_requests
        autoscaling["policy"] = policy_options(scaling.signal, target, max_num_seqs)
    return autoscaling


def deployment_options(model: ModelConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "autoscaling_config": autoscaling_options(model.autoscaling, model.engine.max_num_seqs),
        "max_ongoing_requests": model.max_ongoing_requests,
    }
    if model.engine.accelerator == "cpu":
        options["ray_actor_options"] = {"num_cpus": model.num_cpus}
    if model.resources:  # Ray Serve LLM merges them into the replica's first placement-group bundle
        options.setdefault("ray_actor_options", {})["resources"] = dict(model.resources)
    if model.engine.request_router == "prefix_aware":
        options["request_router_config"] = {
            "request_router_class": PREFIX_AWARE_ROUTER,
            "request_router_kwargs": dict(model.engine.prefix_router_kwargs),
        }
    return options


def build_llm_config(
    model: ModelConfig,
    model_source: str,
    adapter_registry: str | None = None,
    adapter_cache: str | None = None,
    tracing: dict[str, Any] | None = None,
    phase_file: str | None = None,
) -> Any:
    """Translate one ModelConfig into Ray Serve LLM's LLMConfig (`model_source` already resolved)."""
    from ray.serve.llm import LLMConfig

    from llm_serve.engine.lora_server import CACHE_KEY, REGISTRY_KEY, SINGLE_PROCESS_KEY, TRACING_KEY

    engine = model.engine
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": model.id, "model_source": model_source},
        "engine_kwargs": engine_kwargs(model, model_source),
        "accelerator_config": {"kind": engine.accelerator},
        "runtime_env": {"env_vars": engine_env(model, phase_file)},
        "deployment_config": deployment_options(model),
        "experimental_configs": {"stream_batching_interval_ms": engine.stream_batching_interval_ms},
        "log_engine_metrics": engine.engine_metrics,
    }
    if tracing is not None:
        kwargs["experimental_configs"][TRACING_KEY] = tracing
    if engine.cpu_single_process and engine.accelerator == "cpu":
        kwargs["experimental_configs"][SINGLE_PROCESS_KEY] = True
    if engine.accelerator_type:
        kwargs["accelerator_type"] = engine.accelerator_type
    if model.lora.enabled:
        # No dynamic_lora_loading_path: RegistryLoraServer loads from our registry instead of a bucket.
        kwargs["lora_config"] = {"max_num_adapters_per_replica": model.lora.max_adapters_per_replica}
        kwargs["experimental_configs"].update({REGISTRY_KEY: adapter_registry, CACHE_KEY: adapter_cache})
    return LLMConfig(**kwargs)


def build_engine_deployment(
    model: ModelConfig,
    model_source: str,
    adapter_registry: str | None = None,
    adapter_cache: str | None = None,
    tracing: dict[str, Any] | None = None,
    phase_file: str | None = None,
) -> Any:
    """The bound Serve application of one engine pool, named after the model id."""
    from ray.serve.llm import build_llm_deployment

    from llm_serve.engine.lora_server import RegistryLoraServer

    llm_config = build_llm_config(model, model_source, adapter_registry, adapter_cache, tracing, phase_file)
    return build_llm_deployment(
        llm_config,
        deployment_cls=RegistryLoraServer,
        name_prefix="",
        override_serve_options={"name": engine_deployment_name(model.id)},
    )
