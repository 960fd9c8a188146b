"""Prometheus metrics of the serving path, recorded through Ray's metrics API.

Ray's metrics agent on every node already scrapes its workers and serves Prometheus text on the
node's metrics export port (with `ray_` prefixed to every name), next to Serve's and vLLM's own
series; recording through `ray.util.metrics` puts ours in the same scrape, with the replica's
identity as labels, and needs no port per replica. Names follow the OpenTelemetry GenAI metric
conventions where they have one (`gen_ai.server.request.duration` -> `gen_ai_server_request_duration`,
seconds), and `llm_serve_*` otherwise.

Each series is recorded from a request's finished ledger row, once per request, so the counters
agree with the ledger. Tags are kept low-cardinality (route, model, status, cache result, error code): no key
names on latency histograms, only on the cost counter where spend per key is the point.
"""

from __future__ import annotations

import logging
from typing import Any

from llm_serve.config import MetricsConfig

logger = logging.getLogger("llm_serve.telemetry")

# GenAI convention names (dots become underscores in Prometheus).
REQUEST_DURATION = "gen_ai_server_request_duration"
TIME_TO_FIRST_TOKEN = "gen_ai_server_time_to_first_token"
TIME_PER_OUTPUT_TOKEN = "gen_ai_server_time_per_output_token"
TOKEN_USAGE = "gen_ai_client_token_usage"


class _NoMetric:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        return None

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        return None

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        return None


class ServingMetrics:
    """Every series the router exports; a disabled instance records nothing."""

    def __init__(self, config: MetricsConfig | None = None) -> None:
        config = config or MetricsConfig()
        self.enabled = config.enabled
        if not config.enabled:
            none = _NoMetric()
            self.requests = self.errors = self.tokens = self.cost = self.cache_lookups = none
            self.duration = self.ttft = self.tpot = self.token_usage = self.retrieval = none
            self.ongoing = self.queued = self.groundedness = self.hallucination_rate = self.scored = none
            self.guardrail_findings = self.toxicity = self.toxicity_scored = self.toxic_rate = none
            self.feedback = self.feedback_score = none
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        latency = list(config.latency_buckets_s)
        self.requests = Counter(
            "llm_serve_requests", "Requests answered, by route, model and HTTP status.", ("route", "model", "status")
        )
        self.errors = Counter(
            "llm_serve_errors", "Requests that failed, by error code (OpenAI error codes).", ("route", "model", "code")
        )
        self.tokens = Counter(
            "llm_serve_tokens", "Tokens processed (gen_ai.token.type input or output).", ("model", "token_type")
        )
        self.cost = Counter("llm_serve_cost_usd", "Spend in USD, by model and API key name.", ("model", "key"))
        self.cache_lookups = Counter(
            "llm_serve_cache_lookups",
            "Generation requests by how the caches served them (hit, semantic_hit, miss, bypass, coalesced).",
            ("route", "model", "result"),
        )
        self.duration = Histogram(
            REQUEST_DURATION,
            "End-to-end request duration in seconds (GenAI convention).",
            latency,
            ("gen_ai_operation_name", "gen_ai_request_model", "status"),
        )
        self.ttft = Histogram(
            TIME_TO_FIRST_TOKEN,
            "Time to the first engine output of a streamed request, in seconds (GenAI convention).",
            latency,
            ("gen_ai_operation_name", "gen_ai_request_model"),
        )
        self.tpot = Histogram(
            TIME_PER_OUTPUT_TOKEN,
            "Time per output token after the first, in seconds (GenAI convention).",
            list(config.token_latency_buckets_s),
            ("gen_ai_operation_name", "gen_ai_request_model"),
        )
        self.token_usage = Histogram(
            TOKEN_USAGE,
            "Tokens per request, by gen_ai.token.type (GenAI convention).",
            list(config.token_buckets),
            ("gen_ai_operation_name", "gen_ai_request_model", "gen_ai_token_type"),
        )
        self.retrieval = Histogram(
            "llm_serve_retrieval_duration",
            "Retrieval (embed + vector search) duration in seconds, by collection.",
            latency,
            ("collection",),
        )
        self.ongoing = Gauge("llm_serve_requests_ongoing", "Requests in this router replica now.", ("route",))
        self.queued = Gauge(
            "llm_serve_requests_queued", "Requests waiting for an engine's first output in this router replica.", ()
        )
        self.groundedness = Histogram(
            "llm_serve_rag_groundedness",
            "Groundedness of sampled RAG answers (share of sentences supported by the retrieved context).",
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            ("model", "collection"),
        )
        self.scored = Counter(
            "llm_serve_rag_scored", "RAG answers scored online, by verdict (grounded, hallucinated).", ("verdict",)
        )
        self.hallucination_rate = Gauge(
            "llm_serve_rag_hallucination_rate",
            "Share of recently scored RAG answers below the groundedness threshold (this router replica).",
            (),
        )
        self.guardrail_findings = Counter(
            "llm_serve_guardrail_findings",
            "Guardrail checks that fired, by direction (input, output), check (toxicity, pii) and action.",
            ("direction", "check", "action"),
        )
        self.toxicity = Histogram(
            "llm_serve_output_toxicity",
            "Toxicity of sampled answers (alt-profanity-check's probability).",
            [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
            ("model",),
        )
        self.toxicity_scored = Counter(
            "llm_serve_output_toxicity_scored",
            "Answers scored online for toxicity, by verdict (clean, toxic).",
            ("verdict",),
        )
        self.feedback = Counter(
            "llm_serve_feedback",
            "User feedback submissions (POST /v1/feedback) by model, adapter, prompt name@version and signal "
            "(thumbs_up, thumbs_down, task_completed, task_not_completed, escalated, not_escalated).",
            ("model", "adapter", "prompt", "signal"),
        )
        self.feedback_score = Histogram(
            "llm_serve_feedback_score", "1-5 satisfaction scores given as feedback.", [1, 2, 3, 4, 5], ("model",)
        )
        self.toxic_rate = Gauge(
            "llm_serve_output_toxic_rate",
            "Share of recently scored answers at or above the toxicity threshold (this router replica).",
            (),
        )

    def record(
        self, row: Any, *, model_known: bool, error_code: str | None = None, ttft_s: float | None = None
    ) -> None:
        """One finished request into every series it touches.

        `row` is its ledger row (route, model, status, tokens, cost, cache, latency); `model_known` says
        whether `row.model` is a configured pool, since only those may become label values.
        """
        if not self.enabled:
            return
        try:
            self._record(row, model_known, error_code, ttft_s)
        except Exception as exc:  # metrics must never fail a request
            logger.warning("metrics recording failed (%s: %s)", type(exc).__name__, exc)

    def _record(self, row: Any, model_known: bool, error_code: str | None, ttft_s: float | None) -> None:
        from llm_serve.telemetry.genai import operation

        model = row.model if model_known and row.model else "unknown"
        status = str(row.status)
        op = operation(row.route)
        self.requests.inc(1, {"route": row.route, "model": model, "status": status})
        if row.status >= 400:
            self.errors.inc(1, {"route": row.route, "model": model, "code": error_code or status})
        self.duration.observe(
            row.latency_ms / 1000, {"gen_ai_operation_name": op, "gen_ai_request_model": model, "status": status}
        )
        for token_type, count in (("input", row.prompt_tokens), ("output", row.completion_tokens)):
            if count:
                self.tokens.inc(count, {"model": model, "token_type": token_type})
                self.token_usage.observe(
                    count, {"gen_ai_operation_name": op, "gen_ai_request_model": model, "gen_ai_token_type": token_type}
                )
        if row.cost_usd:
            self.cost.inc(row.cost_usd, {"model": model, "key": row.key_name})
        if row.route != "embeddings" and row.cache != "none":
            self.cache_lookups.inc(1, {"route": row.route, "model": model, "result": row.cache})
        if ttft_s is not None:
            tags = {"gen_ai_operation_name": op, "gen_ai_request_model": model}
            self.ttft.observe(ttft_s, tags)
            if row.completion_tokens > 1:
                decode_s = row.latency_ms / 1000 - ttft_s
                self.tpot.observe(max(0.0, decode_s) / (row.completion_tokens - 1), tags)
