"""What one request accumulates on its way through the router's stages (pipeline.py gives their order).

Every stage reads what earlier stages learnt from this one object and adds what it learns itself, so
following a request means reading one dataclass instead of chasing a body dict, a record and a
cache lookup that were each mutated in several places. `row` is the request's ledger row
(ledger.py declares its columns); the other fields are the router's working state and never reach
the ledger.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Span

from llm_serve import headers as h
from llm_serve.adapters import AdapterInfo
from llm_serve.config import RagAlias
from llm_serve.rag.retriever import RagRequest
from llm_serve.router.auth import Caller
from llm_serve.router.cache_keys import CacheContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.ledger import LedgerRow

logger = logging.getLogger("llm_serve.router")

# A client's own request id goes into the ledger (64 characters) and the logs: nothing else is taken.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(headers: Mapping[str, str]) -> str:
    """The client's `x-request-id` when it sent a well-formed one, a fresh id when it sent none."""
    given = headers.get(h.REQUEST_ID)
    if not given:
        return uuid.uuid4().hex
    if not REQUEST_ID.match(given):
        raise OpenAIError(
            400,
            "x-request-id must be 1 to 64 letters, digits or . _ : -",
            code="invalid_request_id",
            param=h.REQUEST_ID,
        )
    return given


@dataclass
class CacheLookup:
    """One request's cache coordinates, carried from lookup to fill."""

    ctx: CacheContext
    bypass: bool
    cacheable: bool
    deterministic: bool = False
    exact_key: str | None = None
    scope: str | None = None
    question: str | None = None
    vector: list[float] | None = None
    similarity: float | None = None

    @property
    def fills(self) -> bool:
        """Whether an answer made for this request may be stored for later ones."""
        return self.cacheable and not self.bypass


@dataclass
class RequestContext:
    row: LedgerRow
    caller: Caller
    headers: Mapping[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    # Every price of this request is multiplied by this: below 1 for a batch's discount.
    price_factor: float = 1.0

    # parse: the JSON body (turned into the engine request by later stages) and our extensions to it
    data: dict[str, Any] = field(default_factory=dict)
    rag_raw: Any = None
    prompt_raw: Any = None
    cache_opt: bool | None = None

    # resolve: the pools to try in order, and what the requested id turned out to name
    candidates: list[str] = field(default_factory=list)
    alias: RagAlias | None = None
    adapter: AdapterInfo | None = None
    # Whether `row.model` names a configured pool: only then may it label metrics and name spans (a client
    # can send any string as `model`, and unbounded label values would swamp Prometheus).
    model_known: bool = False
    rag: RagRequest | None = None

    # guardrails: the request's policies (found once, on first use) and what their checks found
    guard_policies: list[Any] | None = None
    guard_findings: list[Any] = field(default_factory=list)

    # validate: the engine request (vLLM's protocol object) and what the client asked of the stream
    body: Any = None
    include_usage: bool = False
    continuous_usage: bool = False  # the client's own `continuous_usage_stats`
    estimated_prompt_tokens: int = 0

    # admit: what is held against the key's budget and tpm until settlement, and the prompt's count
    reservation: str | None = None
    prompt_tokens_bound: int | None = None

    # retrieve: what the response reports (sources, rag info) and, when sampled, the monitor's context
    extra: dict[str, Any] | None = None
    rag_contexts: list[str] | None = None
    # respond: whether the toxicity monitor samples this answer (None: not decided yet)
    watch_toxicity: bool | None = None

    # cache lookup
    lookup: CacheLookup | None = None

    # dispatch: the engine's first result and the rest of its stream; the flight driving the call, if any
    first: Any = None
    results: Any = None
    flight: Any = None
    owns_flight: bool = False  # this request started the flight: it pays for all the flight produced
    ttft_s: float | None = None  # streamed requests: time to the engine's first output

    # settle
    finished: bool = False
    settled: bool = False
    error_code: str | None = None  # the OpenAI error code of a failed request (the errors metric's label)
    span: Span | None = None  # the request's `chat {model}` span, ended at settlement
    trace_id: str | None = None

    @classmethod
    def start(cls, route: str, caller: Caller, headers: Mapping[str, str], data: dict[str, Any]) -> RequestContext:
        requested = data.get("model")
        row = LedgerRow(
            request_id=request_id(headers),
            key_name=caller.name,
            route=route,
            model=requested if isinstance(requested, str) else "",
            stream=bool(data.get("stream")),
        )
        return cls(row=row, caller=caller, headers=headers, data=data)

    # ---- outcome --------------------------------------------------------------------------------

    def finish(self, status: int | None = None, error: str | None = None, code: str | None = None) -> None:
        if status is not None:
            self.row.status = status
        self.row.error = error
        if code is not None:
            self.error_code = code
        self.finished = True

    def fail(self, exc: OpenAIError) -> None:
        """End with `exc`, unless an earlier stage already said how the request failed (a timeout's 504)."""
        if not self.finished or self.row.status < 400:
            self.finish(exc.status, exc.message, exc.code)
        elif self.error_code is None:
            self.error_code = exc.code

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        self.row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.row.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.row.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)

    # ---- derived --------------------------------------------------------------------------------

    @property
    def route(self) -> str:
        return self.row.route

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    @property
    def served(self) -> str:
        """The pool (and adapter) that answered, as the model header and the span name show it."""
        return f"{self.row.model}:{self.row.adapter}" if self.row.adapter else self.row.model

    @property
    def adapter_version(self) -> str | None:
        """The adapter and its publish time: a retrained adapter never answers from the old one's cache."""
        if self.adapter is None:
            return None
        return f"{self.row.adapter}@{self.adapter.metadata.get('created_at')}"

    def response_headers(self, **extra: str) -> dict[str, str]:
        headers = {h.REQUEST_ID: self.row.request_id, h.MODEL: self.served}
        if self.row.prompt:
            headers[h.PROMPT] = self.row.prompt
        if self.row.guardrail:
            headers[h.GUARDRAIL] = self.row.guardrail
        if self.route != "embeddings":
            headers[h.CACHE] = self.row.cache
        return {**headers, **extra}

    def cost_headers(self) -> dict[str, str]:
        return self.response_headers(**{h.COST: f"{self.row.cost_usd:.10f}"})

    def log(self) -> None:
        row = self.row
        logger.info(
            "request %s key=%s route=%s model=%s stream=%s status=%d cache=%s prompt_tokens=%d "
            "completion_tokens=%d cost_usd=%.8f latency_ms=%.1f trace_id=%s%s",
            row.request_id,
            row.key_name,
            row.route,
            row.model,
            row.stream,
            row.status,
            row.cache,
            row.prompt_tokens,
            row.completion_tokens,
            row.cost_usd,
            row.latency_ms,
            self.trace_id or "-",
            f" error={row.error}" if row.error else "",
        )
