"""Each stage of the router's generation path alone, on a RequestContext built by hand.

The HTTP-level tests (test_router.py, test_router_policies.py) show the stages together; these pin
what each stage reads, what it adds to the context and when it ends the request, so a stage can be
changed without reading the whole path.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llm_serve.config import Config, parse_config
from llm_serve.eval.groundedness import GroundednessMonitor
from llm_serve.prompts import PromptRegistry, default_prompts_dir
from llm_serve.rag.errors import RagError
from llm_serve.rag.retriever import RagRequest, Retrieval
from llm_serve.rag.store import Hit
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.auth import ANONYMOUS, Caller
from llm_serve.router.coalesce import Coalescer
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.ingress import Router
from llm_serve.router.observe import Observer
from llm_serve.router.pipeline import GenerationPipeline
from llm_serve.router.prompt_tokens import PromptTokens
from llm_serve.router.stages.admit import Admit
from llm_serve.router.stages.cache import Cache
from llm_serve.router.stages.dispatch import Dispatch
from llm_serve.router.stages.parse import Parse
from llm_serve.router.stages.prompt import RenderPrompt
from llm_serve.router.stages.resolve import Resolve
from llm_serve.router.stages.retrieve import Retrieve
from llm_serve.router.stages.settle import Settler, price
from llm_serve.router.stages.validate import Validate
from llm_serve.router.state import RouterState, StateClient
from llm_serve.telemetry.metrics import ServingMetrics
from tests.unit.fakes import GREEDY, KEYS, A, B, Engine, chat, keys_config

PRICES = {"input_per_1m": 1.0, "output_per_1m": 2.0, "cached_input_per_1m": 0.5}


def config(**extra: Any) -> Config:
    return parse_config(
        {
            "models": [{"id": A, "source": "x", "price": PRICES}, {"id": B, "source": "x"}],
            "embedding_models": [],
            **extra,
        }
    )


def context(data: dict[str, Any], route: str = "chat", caller: Caller | None = None, **headers: str) -> RequestContext:
    return RequestContext.start(route, caller or Caller(ANONYMOUS, None), headers, data)


def observer() -> Observer:
    metrics = ServingMetrics()
    return Observer(metrics, GroundednessMonitor(parse_config({}).telemetry.groundedness, metrics))


async def prepared(cfg: Config, data: dict[str, Any], route: str = "chat") -> RequestContext:
    """A context through parse, resolve and validate: what the later stages start from."""
    ctx = context(data, route)
    await Parse()(ctx)
    await Resolve(cfg, AdapterCatalog(cfg))(ctx)
    await Validate()(ctx)
    return ctx


# ---- the order ----------------------------------------------------------------------------------


def test_the_router_runs_the_documented_stage_order() -> None:
    router = Router(config(), {A: Engine(A).handle, B: Engine(B).handle})
    assert router.pipeline.order == (
        "parse",
        "resolve",
        "guard_input",
        "render_prompt",
        "validate",
        "limits",
        "admit",
        "retrieve",
        "cache_lookup",
        "dispatch",
        "respond",
    )


class Recorder:
    def __init__(self, name: str, log: list[str], answer: Any = None, fail: Exception | None = None) -> None:
        self.name, self.log, self.answer, self.fail = name, log, answer, fail

    async def __call__(self, ctx: RequestContext) -> Any:
        self.log.append(self.name)
        if self.fail is not None:
            raise self.fail
        return self.answer


class CountingSettler:
    def __init__(self) -> None:
        self.settled: list[tuple[int, str | None]] = []

    async def __call__(self, ctx: RequestContext) -> None:
        self.settled.append((ctx.row.status, ctx.error_code))


async def test_an_early_answer_skips_the_later_stages_and_settles_once() -> None:
    log: list[str] = []
    settle = CountingSettler()
    pipeline = GenerationPipeline(
        [("a", Recorder("a", log)), ("b", Recorder("b", log, answer="hit")), ("c", Recorder("c", log))],
        keys=None,  # type: ignore[arg-type]
        max_body_bytes=1024,
        max_inflight=100,
        observer=observer(),
        settle=settle,  # type: ignore[arg-type]
    )
    ctx = context(chat())
    assert await pipeline.run(ctx) == "hit"
    assert log == ["a", "b"] and len(settle.settled) == 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (OpenAIError(429, "slow down", code="rate_limit_exceeded"), 429, "rate_limit_exceeded"),
        (RuntimeError("bug"), 500, "internal_error"),
    ],
)
async def test_a_failing_stage_is_settled_once_with_its_status(error: Exception, status: int, code: str) -> None:
    settle = CountingSettler()
    pipeline = GenerationPipeline(
        [("a", Recorder("a", [], fail=error)), ("b", Recorder("b", []))],
        keys=None,  # type: ignore[arg-type]
        max_body_bytes=1024,
        max_inflight=100,
        observer=observer(),
        settle=settle,  # type: ignore[arg-type]
    )
    with pytest.raises(type(error)):
        await pipeline.run(context(chat()))
    assert settle.settled == [(status, code)]


# ---- parse, resolve, prompt, validate -----------------------------------------------------------


async def test_parse_takes_our_extensions_off_the_body() -> None:
    ctx = context(chat(rag={"collection": "kb"}, prompt={"name": "p"}, cache=False))
    await Parse()(ctx)
    assert (ctx.rag_raw, ctx.prompt_raw, ctx.cache_opt) == ({"collection": "kb"}, {"name": "p"}, False)
    assert {"rag", "prompt", "cache"}.isdisjoint(ctx.data)
    completion = context({"model": A, "prompt": "Once upon"}, route="completions")
    await Parse()(completion)
    assert completion.data["prompt"] == "Once upon" and completion.prompt_raw is None  # `prompt` is its text there


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        ({"messages": []}, 400, "missing_required_parameter"),
        ({"model": 3}, 422, "invalid_type"),
        ({"model": A, "cache": "no"}, 422, "invalid_type"),
    ],
)
async def test_parse_refusals(data: dict[str, Any], status: int, code: str) -> None:
    with pytest.raises(OpenAIError) as info:
        await Parse()(context(data))
    assert (info.value.status, info.value.code) == (status, code)


async def test_resolve_gives_alias_target_and_fallbacks_the_key_may_use() -> None:
    cfg = config(routing={"aliases": {"gpt-4o-mini": A}, "fallbacks": {A: [B]}})
    ctx = context(chat("gpt-4o-mini"))
    await Resolve(cfg, AdapterCatalog(cfg))(ctx)
    assert ctx.candidates == [A, B] and ctx.row.model == A and ctx.model_known and ctx.data["model"] == A

    keyed = parse_config({**cfg.model_dump(mode="json"), **keys_config()})
    bob = Caller("bob", keyed.auth.keys[1])  # may use B only
    with pytest.raises(OpenAIError) as info:
        await Resolve(keyed, AdapterCatalog(keyed))(context(chat(A), caller=bob))
    assert info.value.status == 403 and KEYS["bob"] not in info.value.message


async def test_resolve_reads_rag_over_alias_defaults_and_refuses_rag_on_completions() -> None:
    aliases = [{"id": "support", "model": A, "collection": "kb", "top_k": 3}]
    cfg = config(rag={"aliases": aliases}, embedding_models=[{"id": "all-minilm-l6-v2"}])
    ctx = context(chat("support", rag={"top_k": 2}))
    await Parse()(ctx)
    await Resolve(cfg, AdapterCatalog(cfg))(ctx)
    assert ctx.candidates == [A] and ctx.alias is not None
    assert (ctx.rag.collection, ctx.rag.top_k) == ("kb", 2)
    completion = context({"model": A, "prompt": "x", "rag": {"collection": "kb"}}, route="completions")
    await Parse()(completion)
    with pytest.raises(OpenAIError) as info:
        await Resolve(cfg, AdapterCatalog(cfg))(completion)
    assert (info.value.status, info.value.param) == (400, "rag")


async def test_render_prompt_puts_messages_first_and_enforces_its_schema() -> None:
    registry = PromptRegistry.load(default_prompts_dir())
    ctx = context(chat(question="and then?", prompt={"name": "ticket-triage", "variables": {"ticket": "It broke"}}))
    await Parse()(ctx)
    await RenderPrompt(registry)(ctx)
    assert ctx.row.prompt.startswith("ticket-triage@")
    assert ctx.data["messages"][-1]["content"] == "and then?" and len(ctx.data["messages"]) > 1
    assert ctx.data["response_format"]["type"] == "json_schema"
    triage = {"name": "ticket-triage", "variables": {"ticket": "x"}}
    clash = context(chat(prompt=triage, response_format={"type": "text"}))
    await Parse()(clash)
    with pytest.raises(OpenAIError) as info:
        await RenderPrompt(registry)(clash)
    assert info.value.param == "response_format"


async def test_validate_always_asks_streams_for_usage_but_remembers_the_clients_choice() -> None:
    cfg = config()
    ctx = await prepared(cfg, chat(stream=True))
    assert ctx.body.stream_options.include_usage is True and ctx.include_usage is False
    with pytest.raises(OpenAIError) as info:
        await prepared(cfg, chat(temperature="hot"))
    assert (info.value.status, info.value.param) == (422, "temperature")


# ---- admit --------------------------------------------------------------------------------------


async def test_admit_counts_and_refuses_past_the_keys_rpm() -> None:
    cfg = parse_config({**config().model_dump(mode="json"), **keys_config(rpm=1)})
    admit = Admit(cfg, StateClient(RouterState(cfg)), PromptTokens({}, cfg.router.prompt_overhead_tokens))
    alice = Caller("alice", cfg.auth.keys[0])
    await admit(context(chat(), caller=alice))
    with pytest.raises(OpenAIError) as info:
        await admit(context(chat(), caller=alice))
    assert info.value.status == 429 and info.value.headers["retry-after"]
    await admit(context(chat()))  # no key, no limits: never counted


# ---- retrieve -----------------------------------------------------------------------------------


class FakeRetriever:
    def __init__(self, hits: list[Hit] | None = None, error: RagError | None = None) -> None:
        self.hits, self.error = hits or [], error

    async def retrieve(self, question: str, request: RagRequest) -> Retrieval:
        if self.error is not None:
            raise self.error
        return Retrieval(request.collection, self.hits, self.hits, {"embed": 1.0, "search": 1.0})


RAG_PROMPT = PromptRegistry.load(default_prompts_dir()).resolve("rag-grounded").prompt


async def test_retrieve_grounds_the_conversation_and_reports_sources() -> None:
    cfg = config()
    ctx = await prepared(cfg, chat(rag={"collection": "kb"}))
    hit = Hit("id", "doc", "manual.md", 0, -1, "The warranty is 27 months.", 0.8)
    assert await Retrieve(cfg, FakeRetriever([hit]), RAG_PROMPT, observer())(ctx) is None
    assert ctx.body.messages[0]["role"] == "system" and "27 months" in ctx.body.messages[0]["content"]
    assert ctx.extra["sources"][0]["source"] == "manual.md" and ctx.extra["rag"]["used"] == 1


async def test_retrieve_refuses_when_nothing_is_relevant() -> None:
    cfg = config(rag={"fallback": "refuse"})
    ctx = await prepared(cfg, chat(rag={"collection": "kb"}))
    response = await Retrieve(cfg, FakeRetriever([]), RAG_PROMPT, observer())(ctx)
    assert response is not None and ctx.finished and ctx.row.status == 200
    assert ctx.extra["rag"]["fallback"] == "refused"


@pytest.mark.parametrize(
    ("error", "status", "param"),
    [
        (RagError("no such", kind="not_found", code="collection_not_found", param="collection"), 404, "rag.collection"),
        (RagError("bad", kind="invalid_request", code="invalid_filter", param="filter"), 400, "rag.filter"),
        (RagError("long", kind="invalid_request", code="context_length_exceeded", param="question"), 400, "messages"),
        (RagError("down", kind="unavailable", code="store_unavailable"), 503, None),
    ],
)
async def test_retrieve_maps_rag_errors_to_http(error: RagError, status: int, param: str | None) -> None:
    cfg = config()
    ctx = await prepared(cfg, chat(rag={"collection": "kb"}))
    with pytest.raises(OpenAIError) as info:
        await Retrieve(cfg, FakeRetriever(error=error), RAG_PROMPT, observer())(ctx)
    assert (info.value.status, info.value.code, info.value.param) == (status, error.code, param)


# ---- cache lookup -------------------------------------------------------------------------------

ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": A,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 10, "total_tokens": 1010},
}


async def test_cache_stores_whole_answers_and_replays_them_priced_as_hits() -> None:
    cfg = config()
    cache = Cache(cfg, StateClient(RouterState(cfg)), None, observer())
    first = await prepared(cfg, chat(**GREEDY))
    assert await cache(first) is None and first.row.cache == "miss"
    await cache.fill(first.lookup, {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": None}]})
    again = await prepared(cfg, chat(**GREEDY))
    assert await cache(again) is None  # a cut-off answer is never stored
    await cache.fill(first.lookup, ANSWER)
    hit = await prepared(cfg, chat(**GREEDY))
    assert await cache(hit) is not None and hit.row.cache == "hit" and hit.finished
    # hit_billing cached_input: the prompt at the cached-input rate, no output
    assert hit.row.cost_usd == pytest.approx(1000 * 0.5 / 1e6)


async def test_cache_is_bypassed_by_header_and_skips_sampled_requests() -> None:
    cfg = config()
    cache = Cache(cfg, StateClient(RouterState(cfg)), None, observer())
    ctx = await prepared(cfg, chat(**GREEDY))
    ctx.headers = {"cache-control": "no-cache"}
    assert await cache(ctx) is None and ctx.row.cache == "bypass" and not ctx.lookup.fills
    sampled = await prepared(cfg, chat(temperature=0.7))
    assert await cache(sampled) is None and sampled.row.cache == "none" and not sampled.lookup.fills


# ---- dispatch -----------------------------------------------------------------------------------


async def test_dispatch_falls_back_and_moves_the_cache_coordinates() -> None:
    cfg = config(routing={"fallbacks": {A: [B]}})
    engines = {A: Engine(A, fail=True), B: Engine(B)}
    ctx = await prepared(cfg, chat(**GREEDY))
    await Cache(cfg, StateClient(RouterState(cfg)), None, observer())(ctx)
    key_for_a = ctx.lookup.exact_key
    await Dispatch(cfg, {m: e.handle for m, e in engines.items()}, Coalescer(5.0), observer())(ctx)
    assert ctx.row.model == B and ctx.body.model == B and ctx.first is not None
    assert ctx.lookup.ctx.model == B and ctx.lookup.exact_key not in (None, key_for_a)
    assert len(engines[A].calls) == 1 and len(engines[B].calls) == 1


async def test_dispatch_timeout_is_504_without_trying_the_fallback() -> None:
    cfg = config(routing={"fallbacks": {A: [B]}}, server={"request_timeout_s": 0.05})
    engines = {A: Engine(A, delay_s=1.0), B: Engine(B)}
    ctx = await prepared(cfg, chat())
    with pytest.raises(OpenAIError) as info:
        await Dispatch(cfg, {m: e.handle for m, e in engines.items()}, Coalescer(5.0), observer())(ctx)
    assert info.value.status == 504 and ctx.row.status == 504 and engines[B].calls == []


# ---- settle -------------------------------------------------------------------------------------


async def test_settle_writes_one_ledger_row_however_often_it_is_called() -> None:
    cfg = config()
    state = RouterState(cfg)
    settle = Settler(cfg, StateClient(state), observer())
    ctx = await prepared(cfg, chat())
    ctx.finish(200)
    await asyncio.gather(settle(ctx), settle(ctx))
    rows = await state.recent(10)
    assert len(rows) == 1 and rows[0]["model"] == A and rows[0]["latency_ms"] >= 0


async def test_settle_keeps_no_row_for_a_request_refused_before_naming_a_model() -> None:
    cfg = config()
    state = RouterState(cfg)
    ctx = context({"messages": []})
    ctx.fail(OpenAIError(400, "no model", code="missing_required_parameter"))
    await Settler(cfg, StateClient(state), observer())(ctx)
    assert ctx.settled and await state.recent(10) == []


@pytest.mark.parametrize(("billing", "expected"), [("free", 0.0), ("cached_input", 50.0), ("full", 140.0)])
def test_price_of_a_hit_follows_hit_billing(billing: str, expected: float) -> None:
    cfg = config(cache={"hit_billing": billing})
    ctx = context(chat())
    ctx.row.model, ctx.row.prompt_tokens, ctx.row.completion_tokens = A, 100_000_000, 20_000_000
    assert price(cfg, ctx, hit=True) == pytest.approx(expected)
    assert price(cfg, ctx, hit=False) == pytest.approx(140.0)
