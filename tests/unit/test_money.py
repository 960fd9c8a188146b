"""Every token an engine produced is priced: for clients that leave, streams cut short, shared calls.

Before, a non-streamed request whose client gave up was recorded as 499, 0 tokens, $0 while the
engine did the work, and a coalesced engine call outlived all its callers unbilled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from llm_serve.router.coalesce import Coalescer, EngineCallAborted
from tests.unit.fakes import (
    GREEDY,
    A,
    B,
    Engine,
    build,
    build_app,
    chat,
    chat_response,
    post_and_leave,
    sse,
    stream_items,
)


async def rows_when(state: Any, predicate: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The ledger rows once `predicate(rows)` holds (a deferred settlement lands a moment later)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        rows = await state.recent(1000)
        if predicate(rows) or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.05)


class Slow(Engine):
    """Answers after `delay_s`; its stream carries the running usage when asked for it (as vLLM does)."""

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        if not body.stream:
            await asyncio.sleep(self.delay_s)
            response = chat_response("a long answer")
            response.usage.completion_tokens = 40
            yield response
            return
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": self.model}
        running = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        for i in range(1, 50):
            await asyncio.sleep(self.delay_s / 50)
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
            if running:
                chunk["usage"] = {"prompt_tokens": 9, "completion_tokens": i, "total_tokens": 9 + i}
            yield [sse(chunk)]
        yield ["data: [DONE]\n\n"]  # vLLM ends every stream it finished with [DONE]


async def test_a_client_that_leaves_a_non_streamed_request_is_billed_for_the_answer() -> None:
    engines = {A: Slow(A, delay_s=0.4), B: Engine(B)}
    client, _, state = build(engines=engines)
    async with client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
        await asyncio.sleep(0.1)
        request.cancel()
        rows = await rows_when(state, lambda rows: rows)
    row = rows[0]
    assert row["status"] == 499 and row["completion_tokens"] == 40 and row["prompt_tokens"] == 5
    assert row["cost_usd"] == (5 * 1.0 + 40 * 2.0) / 1e6
    assert "priced from the engine's usage" in row["error"]


async def test_a_stream_cut_short_is_priced_from_the_running_usage_which_the_client_does_not_see() -> None:
    engines = {A: Slow(A, delay_s=2.0), B: Engine(B)}
    app, _, state = build_app(engines=engines)
    chunks = await post_and_leave(app, "/v1/chat/completions", chat(stream=True), after_chunks=5)
    seen = [json.loads(e[6:]) for c in chunks for e in c.decode().split("\n\n") if e.startswith("data: {")]
    assert seen and all("usage" not in chunk for chunk in seen), "running usage is stripped unless asked for"
    rows = await rows_when(state, lambda rows: rows)
    row = rows[0]
    assert row["status"] == 499 and row["prompt_tokens"] == 9 and 5 <= row["completion_tokens"] < 49
    assert "estimated" not in (row["error"] or ""), "the engine's own count, not an estimate"


class CancelledUpstream(Engine):
    """Streams three chunks with running usage, then ends cleanly without [DONE] once `cut` is set: what
    the router sees when Serve cancels the engine call of a request whose client left."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.sent, self.cut = asyncio.Event(), asyncio.Event()

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": self.model}
        for i in range(1, 4):
            usage = {"prompt_tokens": 9, "completion_tokens": i, "total_tokens": 9 + i}
            yield [sse({**head, "choices": [{"index": 0, "delta": {"content": f"w{i} "}}], "usage": usage})]
        self.sent.set()
        await self.cut.wait()


async def test_a_stream_whose_engine_call_serve_cancels_first_keeps_its_row_when_the_request_is_cancelled_too() -> None:
    """Serve cancels a request and its engine call from another thread: the engine's stream can end first,
    and the request's own cancellation then lands while it settles. The row must still be written."""
    engine = CancelledUpstream(A)
    app, _, state = build_app(engines={A: engine, B: Engine(B)})
    record = state.record

    async def slow_record(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.3)  # the state actor is a remote call: cancellation can land inside it
        await record(*args, **kwargs)

    state.record = slow_record  # type: ignore[method-assign]
    request = asyncio.ensure_future(post_and_leave(app, "/v1/chat/completions", chat(stream=True), after_chunks=100))
    await asyncio.wait_for(engine.sent.wait(), 5)
    engine.cut.set()  # the engine call ends first ...
    await asyncio.sleep(0.1)
    for _ in range(3):  # ... then the request is cancelled, again at each await, as anyio does
        request.cancel()
        await asyncio.sleep(0.05)
    rows = await rows_when(state, lambda rows: rows)
    assert rows, "the row of a stream cancelled while settling was lost"
    row = rows[0]
    assert row["status"] == 499 and row["completion_tokens"] == 3 and row["cost_usd"] > 0, row


class NoDone(Engine):
    """Ray Serve LLM's shape: the last chunk carries the finish reason and usage, and no [DONE] follows."""

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        for item in stream_items("all of it", self.model):
            yield [e for e in item if not e.startswith("data: [DONE]")]


async def test_a_finished_stream_without_the_engines_done_is_a_whole_answer() -> None:
    client, _, state = build(engines={A: NoDone(A), B: Engine(B)})
    async with client, client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and "all of it" in "".join(lines)
    row = (await rows_when(state, lambda rows: rows))[0]
    assert row["status"] == 200 and row["completion_tokens"] == 4, row


async def test_the_client_can_ask_for_running_usage_itself() -> None:
    engines = {A: Slow(A, delay_s=0.2), B: Engine(B)}
    client, _, _ = build(engines=engines)
    body = chat(stream=True, stream_options={"continuous_usage_stats": True})
    async with client, client.stream("POST", "/v1/chat/completions", json=body) as resp:
        chunks = [json.loads(line[6:]) async for line in resp.aiter_lines() if line.startswith("data: {")]
    assert chunks and all(c.get("usage", {}).get("completion_tokens") for c in chunks if c["choices"])


async def test_a_shared_stream_is_aborted_when_its_last_reader_leaves_and_its_owner_pays() -> None:
    engines = {A: Slow(A, delay_s=3.0), B: Engine(B)}
    app, _, state = build_app(engines=engines)
    body = chat(stream=True, **GREEDY)
    await asyncio.gather(
        post_and_leave(app, "/v1/chat/completions", body, after_chunks=3),
        post_and_leave(app, "/v1/chat/completions", body, after_chunks=6),
    )
    rows = await rows_when(state, lambda rows: len(rows) == 2)
    assert len(engines[A].calls) == 1, "one engine call for both"
    by_cache = {r["cache"]: r for r in rows}
    owner, follower = by_cache["miss"], by_cache["coalesced"]
    assert 6 <= owner["completion_tokens"] < 49, "the call ended when its last reader left, and the owner paid"
    assert owner["status"] == follower["status"] == 499
    assert owner["cost_usd"] > follower["cost_usd"]


async def test_a_flight_nobody_reads_is_aborted_unless_it_must_finish_to_be_priced() -> None:
    cancelled: list[bool] = []

    async def engine_call() -> AsyncIterator[Any]:
        try:
            for i in range(100):
                await asyncio.sleep(0.01)
                yield [sse({"choices": [{"delta": {"content": str(i)}}], "usage": {"completion_tokens": i}})]
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    coalescer = Coalescer(timeout_s=10)
    stream = coalescer.start(engine_call, stream=True)
    reader = stream.subscribe()
    await reader.__anext__()
    reader.cancel()
    assert await stream.wait(1.0) and stream.usage is not None and stream.usage["completion_tokens"] < 99
    assert cancelled == [True], "the engine call itself was stopped"
    late = stream.subscribe()
    try:
        while True:
            await late.__anext__()
    except EngineCallAborted:
        pass
    whole = coalescer.start(engine_call, stream=False)  # a non-streamed call runs on to be priced
    whole.subscribe().cancel()
    assert await whole.wait(3.0) and whole.usage["completion_tokens"] == 99


async def test_one_ledger_row_is_found_by_its_request_id_however_many_came_after() -> None:
    client, _, state = build()
    async with client:
        first = await client.post("/v1/chat/completions", json=chat(A), headers={"x-request-id": "look-me-up"})
        assert first.status_code == 200
        for _ in range(3):
            await client.post("/v1/chat/completions", json=chat(A, max_tokens=3))
        await rows_when(state, lambda rows: len(rows) >= 4)
        latest = (await client.get("/admin/requests", params={"limit": 1})).json()["data"]
        assert [r["request_id"] for r in latest] != ["look-me-up"]
        found = (await client.get("/admin/requests", params={"request_id": "look-me-up"})).json()["data"]
        assert [r["request_id"] for r in found] == ["look-me-up"]
        bad = await client.get("/admin/requests", params={"request_id": "no spaces allowed"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "request_id"


class Method:
    """One method of a fake Serve handle: records the Serve request context each call is made in."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def remote(self, *args: Any) -> Any:
        from ray.serve.context import _get_serve_request_context

        self.seen.append(_get_serve_request_context()._internal_request_id)

        async def answer() -> dict[str, Any]:
            return {"reservation": "r1"}

        return answer()


async def test_the_ledger_write_is_no_child_of_the_request_that_serve_cancels() -> None:
    """Serve cancels every handle call a request made (found by the request id its context carries) when
    the request is cancelled: a settlement's `record`, issued at that moment, was cancelled with it, and the
    row of an abandoned stream was lost (about 1 stream in 6 on the live stack). The write is issued without
    the request's context; the other calls stay its children, so that they end with it."""
    from ray.serve.context import _set_request_context

    from llm_serve.router.ledger import LedgerRow
    from llm_serve.router.state import StateClient

    seen: list[str] = []
    handle = type("Handle", (), {"record": Method(seen), "admit": Method(seen)})()
    client = StateClient(handle)
    _set_request_context(request_id="client-id", _internal_request_id="parent-request")
    await client.record(LedgerRow(request_id="client-id", key_name="k", route="chat", model="m"))
    await client._call("admit")
    assert seen[0] != "parent-request", "the ledger write would be cancelled with its request"
    assert seen[1] == "parent-request"


async def test_a_ledger_write_cancelled_anyway_waits_in_the_spool_and_lands(tmp_path: Any) -> None:
    """A write cancelled from outside (not this request's own cancellation) keeps its row: spooled, offered
    again, taken once; the request itself is answered."""
    import httpx

    from llm_serve.config import parse_config
    from llm_serve.router.ingress import Router
    from llm_serve.router.state import RouterState

    config = parse_config({"home": str(tmp_path), "models": [{"id": A, "source": "x"}], "embedding_models": []})

    class CancelledOnce(RouterState):
        cancelled = 0

        async def record(self, *args: Any, **kwargs: Any) -> None:
            if not self.cancelled:
                self.cancelled += 1
                raise asyncio.CancelledError  # what Serve's sweep of a cancelled request's calls raises
            await super().record(*args, **kwargs)

    state = CancelledOnce(config)
    router = Router(config, {A: Engine(A).handle}, {}, None, state=state)
    transport = httpx.ASGITransport(app=router.build_asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status_code == 200, resp.text
    rows = await rows_when(state, lambda rows: rows)
    assert state.cancelled == 1 and len(rows) == 1 and rows[0]["status"] == 200, rows
