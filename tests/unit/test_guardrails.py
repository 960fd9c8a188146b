"""Guardrails on the router's real path, over a stand-in engine that says what it is told to.

The engine answers `say: TEXT` with TEXT, streamed in 5-character chunks with running usage (as vLLM
does with `continuous_usage_stats`), so what reaches the client after the output checks is known to
the character; the ledger rows come from the real RouterState on SQLite.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_serve.config import GuardChecks, PiiCheck, ToxicityCheck, parse_config
from llm_serve.router.auth import OPEN
from llm_serve.router.context import RequestContext
from llm_serve.router.guardrails import Guardrails, StreamGuard
from llm_serve.safety.guard import check_texts
from llm_serve.safety.pii import find_pii, luhn_valid, redact
from llm_serve.safety.toxicity import ToxicityScorer, toxicity
from tests.unit.fakes import KEYS, A, B, FakeHandle, auth, awaitable, build, chat, chat_response, keys_config, sse

TOXIC = "You are a useless idiot and a moron, fix my purifier now."
CLEAN = "The warranty of the Cirrus 3 lasts 27 months."
PII = "Call Jane on +1 415-555-2671 or mail jane.doe@example.com, card 4111 1111 1111 1111."
REDACTED = "Call Jane on [PHONE] or mail [EMAIL], card [CARD]."
CHUNK = 5


class SayEngine:
    """Answers `say: TEXT` with TEXT (anything else with a fixed clean sentence)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.handle = FakeHandle(self.behaviour)
        self.bodies: list[Any] = []

    def behaviour(self, name: str, body: Any) -> Any:
        if name == "check_health":
            return awaitable(None)
        self.bodies.append(body)
        return self._results(body)

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        if not hasattr(body, "messages"):  # a completion: the tests only look at what the engine was sent
            yield chat_response(CLEAN, self.model)
            return
        question = body.messages[-1]["content"]
        if isinstance(question, list):  # content parts (the Anthropic adapter's translation)
            question = "".join(p.get("text", "") for p in question if isinstance(p, dict))
        question = question if isinstance(question, str) else ""
        text = question.removeprefix("say: ") if question.startswith("say: ") else CLEAN
        if not body.stream:
            response = chat_response(text, self.model)
            yield response
            return
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": self.model}
        pieces = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
        for n, piece in enumerate(pieces, 1):
            usage = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
            yield [sse({**head, "choices": [{"index": 0, "delta": {"content": piece}}], "usage": usage})]
        final = {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10 + len(pieces)}
        yield [
            sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": final}),
            sse({**head, "choices": [], "usage": final}),
            "data: [DONE]\n\n",
        ]


def guarded(**policy_overrides: Any) -> dict[str, Any]:
    strict = {
        "input": {"toxicity": {"action": "block"}, "pii": {"action": "redact"}},
        "output": {"toxicity": {"action": "block"}, "pii": {"action": "redact"}},
        **policy_overrides,
    }
    return {
        **keys_config(guardrails=["strict"]),
        "guardrails": {"policies": {"strict": strict, "watch": {"input": {"pii": {"action": "flag"}}}}},
    }


def make(extra: dict[str, Any]):
    engines = {A: SayEngine(A), B: SayEngine(B)}
    client, _, state = build(extra, engines=engines)  # type: ignore[arg-type]
    return client, engines, state


def stream_content(raw: str) -> tuple[str, list[dict[str, Any]]]:
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    text = "".join(c.get("delta", {}).get("content") or "" for e in events for c in e.get("choices", []))
    return text, events


# ---- the decision, without HTTP -----------------------------------------------------------------------


def test_the_fast_scorer_equals_the_package() -> None:
    from profanity_check import predict_prob

    texts = [TOXIC, CLEAN, PII, "", "shit", "Thanks, that fixed it!", "zzqx unknownword", " ".join([TOXIC, CLEAN] * 40)]
    ours = ToxicityScorer().scores(texts)
    theirs = [0.0 if not t else float(p) for t, p in zip(texts, predict_prob(texts), strict=True)]
    assert ours == pytest.approx(theirs, abs=1e-6)  # ours are rounded to 6 digits
    assert toxicity(TOXIC) > 0.9 and toxicity(CLEAN) < 0.2


def test_pii_found_and_redacted() -> None:
    assert redact(PII, find_pii(PII)) == REDACTED
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    # Not PII: an order number, a version, a date, a time, a wattage, a non-Luhn 16-digit number.
    for text in ("order 48213", "version 2.0.1", "on 2026-12-04 at 10:30", "45 watts", "1234567890123456"):
        assert find_pii(text) == [], text
    assert [m.kind for m in find_pii(PII, ["email"])] == ["email"]
    assert find_pii("Ring 020 7946 0018", region="GB")[0].kind == "phone"
    assert find_pii("Ring 020 7946 0018", region="US") == []  # a national number is read in its region


def test_policies_apply_in_order_and_the_first_block_ends_it() -> None:
    redact_then_block = [
        ("a", GuardChecks(pii=PiiCheck(action="redact"))),
        ("b", GuardChecks(toxicity=ToxicityCheck(threshold=0.5, action="block"))),
    ]
    verdict = check_texts([PII, CLEAN], redact_then_block, "input")
    assert verdict.texts == [REDACTED, CLEAN] and verdict.blocked is None
    assert [f.label for f in verdict.findings] == ["input:pii=redact"]
    verdict = check_texts([TOXIC + " " + PII], redact_then_block, "input")
    assert verdict.blocked is not None and verdict.blocked.policy == "b" and verdict.blocked.detail.startswith("0.9")
    flag = [("c", GuardChecks(pii=PiiCheck(action="flag", kinds=["card"])))]
    verdict = check_texts([PII], flag, "output")
    assert verdict.texts == [PII] and verdict.findings[0].detail == "card"


@pytest.mark.parametrize("seed", range(40))
def test_stream_redaction_holds_for_any_chunking(seed: int) -> None:
    """However the engine cuts the text into chunks, what is sent joins up to the redacted whole."""
    rng = random.Random(seed)
    text = " ".join(rng.sample([PII, CLEAN, "Phone +44 20 7946 0958.", "x@y.org", "4111-1111-1111-1111"], 4))
    config = parse_config(guarded())
    ctx = RequestContext.start("chat", OPEN, {}, {})
    checks = [("strict", GuardChecks(pii=PiiCheck(action="redact")))]
    guard = StreamGuard(Guardrails(config), ctx, checks, "no")
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 30)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    sent = []
    for n, piece in enumerate(pieces):
        choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}}
        if n == len(pieces) - 1:
            choice["finish_reason"] = "stop"
        out = guard.process(sse({"id": "c", "choices": [choice]}))
        sent.append(json.loads(out[6:])["choices"][0]["delta"]["content"])
    assert "".join(sent) == redact(text, find_pii(text))
    assert ctx.row.guardrail == "output:pii=redact"


# ---- input -----------------------------------------------------------------------------------------------


async def test_toxic_input_is_blocked_before_it_costs_anything() -> None:
    client, engines, state = make(guarded())
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(A, TOXIC), headers=auth("alice"))
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "input_blocked" and error["type"] == "invalid_request_error"
        assert error["param"] == "messages" and "'strict'" in error["message"] and "toxicity" in error["message"]
        streamed = await client.post("/v1/chat/completions", json=chat(A, TOXIC, stream=True), headers=auth("alice"))
        assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "input_blocked"
        # bob has no policy: the same text goes through.
        assert (await client.post("/v1/chat/completions", json=chat(B, TOXIC), headers=auth("bob"))).status_code == 200
    assert len(engines[A].bodies) == 0 and len(engines[B].bodies) == 1
    rows = [r for r in await state.recent(10) if r["key_name"] == "alice"]
    assert [(r["status"], r["cost_usd"], r["guardrail"]) for r in rows] == [(400, 0.0, "input:toxicity=block")] * 2


async def test_pii_in_the_input_is_redacted_before_the_engine_sees_it() -> None:
    client, engines, state = make(guarded())
    async with client:
        resp = await client.post(
            "/v1/chat/completions", json=chat(A, "My mail is jane.doe@example.com"), headers=auth("alice")
        )
    assert resp.status_code == 200 and resp.headers["x-llm-serve-guardrail"] == "input:pii=redact"
    assert engines[A].bodies[0].messages[-1]["content"] == "My mail is [EMAIL]"
    assert (await state.recent(1))[0]["guardrail"] == "input:pii=redact"


async def test_prompt_variables_and_content_parts_are_checked_too() -> None:
    extra = {**guarded(), "guardrails": {"policies": {"strict": {"input": {"pii": {}}}}, "default": ["strict"]}}
    engines = {A: SayEngine(A), B: SayEngine(B)}
    client, _, _ = build(extra, engines=engines, prompts=True)  # type: ignore[arg-type]
    body = {
        "model": B,
        "messages": [],
        "prompt": {"name": "support-answer", "version": "1", "variables": {"question": "I am jane@example.com"}},
    }
    parts = chat(B, "")
    parts["messages"][0]["content"] = [{"type": "text", "text": "ring +1 415-555-2671"}]
    async with client:
        assert (await client.post("/v1/chat/completions", json=body, headers=auth("bob"))).status_code == 200
        assert (await client.post("/v1/chat/completions", json=parts, headers=auth("bob"))).status_code == 200
    rendered = json.dumps(engines[B].bodies[0].messages)
    assert "[EMAIL]" in rendered and "jane@example.com" not in rendered
    assert "[PHONE]" in json.dumps(engines[B].bodies[1].messages)


async def test_a_flag_passes_the_text_unchanged_and_marks_it() -> None:
    extra = guarded()
    extra["guardrails"]["default"] = ["watch"]
    client, engines, _ = make(extra)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(B, "card 4111 1111 1111 1111"), headers=auth("bob"))
    assert resp.status_code == 200 and resp.headers["x-llm-serve-guardrail"] == "input:pii=flag"
    assert engines[B].bodies[0].messages[-1]["content"] == "card 4111 1111 1111 1111"


# ---- output ----------------------------------------------------------------------------------------------


async def test_a_toxic_answer_is_blocked_billed_and_never_cached() -> None:
    client, engines, state = make(guarded(input=None))  # output checks only: the request says the text
    ask = chat(A, f"say: {TOXIC}", temperature=0)
    async with client:
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
            assert resp.status_code == 400 and resp.json()["error"]["code"] == "output_blocked"
    assert len(engines[A].bodies) == 2  # the blocked answer was not stored for the second request
    rows = await state.recent(2)
    assert all(r["status"] == 400 and r["cost_usd"] > 0 and r["completion_tokens"] == 1 for r in rows)
    assert rows[0]["guardrail"] == "output:toxicity=block"


async def test_pii_in_an_answer_is_redacted_and_stored_redacted() -> None:
    client, engines, _ = make(guarded(input=None))  # output checks only: the request says the text
    ask = chat(A, f"say: {PII}", temperature=0)
    async with client:
        first = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
        second = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
    for resp in (first, second):
        assert resp.json()["choices"][0]["message"]["content"] == REDACTED
    assert second.headers["x-llm-serve-cache"] == "hit" and len(engines[A].bodies) == 1


async def test_streamed_pii_is_redacted_across_chunk_boundaries() -> None:
    client, _, state = make(guarded(input=None))  # output checks only: the request says the text
    ask = chat(A, f"say: {PII}", stream=True)
    async with client:
        resp = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
    text, events = stream_content(resp.text)
    assert resp.status_code == 200 and text == REDACTED
    assert "415" not in resp.text and "jane.doe" not in resp.text and "4111" not in resp.text
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and resp.text.endswith("data: [DONE]\n\n")
    row = (await state.recent(1))[0]
    assert row["guardrail"] == "output:pii=redact" and row["completion_tokens"] == len(PII) // CHUNK + 1


async def test_a_toxic_stream_ends_with_the_refusal_and_is_billed() -> None:
    client, _, state = make(guarded(input=None, refusal="Let me rephrase that politely."))
    ask = chat(A, f"say: {CLEAN} {TOXIC} And more words after it.", stream=True, stream_options={"include_usage": True})
    async with client:
        resp = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
    text, events = stream_content(resp.text)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    assert text.endswith("Let me rephrase that politely.") and "after it" not in text
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    assert finishes == ["content_filter"]
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["cost_usd"] > 0  # what was made is reported and priced
    row = (await state.recent(1))[0]
    assert row["status"] == 200 and row["guardrail"] == "output:toxicity=block" and "blocked" in row["error"]
    assert row["cost_usd"] == pytest.approx(usage["cost_usd"])


async def test_a_blocked_stream_reads_as_a_refusal_in_the_responses_and_messages_apis() -> None:
    client, _, _ = make(guarded(input=None, refusal="No."))
    text = f"say: {CLEAN} {TOXIC} And more words after it."
    async with client:
        responses = await client.post(
            "/v1/responses", json={"model": A, "input": text, "stream": True}, headers=auth("alice")
        )
        messages = await client.post(
            "/v1/messages",
            json={"model": A, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": text}]},
            headers={"x-api-key": KEYS["alice"], "anthropic-version": "2023-06-01"},
        )
    assert responses.status_code == 200 and messages.status_code == 200, (responses.text, messages.text)
    final = [json.loads(line[6:]) for line in responses.text.splitlines() if line.startswith("data: {")][-1]
    assert final["type"] == "response.incomplete", final["type"]
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}
    deltas = [json.loads(line[6:]) for line in messages.text.splitlines() if line.startswith("data: {")]
    stop = [d["delta"]["stop_reason"] for d in deltas if d.get("type") == "message_delta"]
    assert stop == ["refusal"]


async def test_no_policy_no_change() -> None:
    client, _, state = make(keys_config())
    async with client:
        resp = await client.post(
            "/v1/chat/completions", json=chat(A, f"say: {PII}", stream=True), headers=auth("alice")
        )
    assert stream_content(resp.text)[0] == PII and "x-llm-serve-guardrail" not in resp.headers
    assert (await state.recent(1))[0]["guardrail"] is None


def test_unknown_policy_names_are_refused_at_load() -> None:
    from llm_serve.config import ConfigError

    with pytest.raises(ConfigError, match=r"key 'alice' names guardrail policies that guardrails.policies lacks"):
        parse_config(keys_config(guardrails=["nope"]))
    assert KEYS  # the fixture keys are the ones keys_config hashes


async def test_a_completion_prompt_is_redacted_too() -> None:
    client, engines, _ = make(guarded())
    async with client:
        resp = await client.post(
            "/v1/completions", json={"model": A, "prompt": "Write to jane.doe@example.com"}, headers=auth("alice")
        )
        listed = await client.post(
            "/v1/completions", json={"model": A, "prompt": ["ring +1 415-555-2671", "ok"]}, headers=auth("alice")
        )
    assert resp.status_code == 200 and listed.status_code == 200
    assert engines[A].bodies[0].prompt == "Write to [EMAIL]"
    assert engines[A].bodies[1].prompt == ["ring [PHONE]", "ok"]


async def test_a_pii_block_holds_a_streamed_number_back_until_it_is_whole() -> None:
    extra = guarded(input=None, output={"pii": {"action": "block"}})
    client, _, state = make(extra)
    async with client:
        resp = await client.post(
            "/v1/chat/completions",
            json=chat(A, "say: my card is 4111 1111 1111 1111 ok", stream=True),
            headers=auth("alice"),
        )
    text, events = stream_content(resp.text)
    assert "4111" not in resp.text and text.endswith("I can't help with that.")
    assert [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")] == ["content_filter"]
    assert (await state.recent(1))[0]["guardrail"] == "output:pii=block"


async def test_the_blocking_policys_own_refusal_ends_the_stream() -> None:
    extra = guarded(input=None, output={"toxicity": {"action": "block"}}, refusal="strict says no")
    extra["guardrails"]["policies"]["audit"] = {"output": {"pii": {"action": "flag"}}, "refusal": "audit says no"}
    extra["guardrails"]["default"] = ["audit"]  # first in order, but it only flags
    client, _, _ = make(extra)
    async with client:
        resp = await client.post(
            "/v1/chat/completions", json=chat(A, f"say: {TOXIC}", stream=True), headers=auth("alice")
        )
    assert stream_content(resp.text)[0].endswith("strict says no")


async def test_a_fallback_pool_answers_under_its_own_policies() -> None:
    from tests.unit.fakes import Engine

    extra = {
        **keys_config(),
        "routing": {"fallbacks": {A: [B]}},
        "guardrails": {"policies": {"redact-out": {"output": {"pii": {}}}}},
    }
    extra["models"] = [
        {"id": A, "source": "x"},
        {"id": B, "source": "x", "guardrails": ["redact-out"]},
    ]
    engines = {A: Engine(A, fail=True), B: SayEngine(B)}
    client, _, _ = build(extra, engines=engines)  # type: ignore[arg-type]
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(A, f"say: {PII}"), headers=auth("alice"))
    assert resp.status_code == 200 and resp.headers["x-llm-serve-model"] == B
    assert resp.json()["choices"][0]["message"]["content"] == REDACTED


async def test_a_streamed_answer_is_cached_as_it_was_sent() -> None:
    client, engines, _ = make(guarded(input=None))
    ask = chat(A, f"say: {PII}", temperature=0)
    async with client:
        streamed = await client.post("/v1/chat/completions", json={**ask, "stream": True}, headers=auth("alice"))
        again = await client.post("/v1/chat/completions", json=ask, headers=auth("alice"))
    assert stream_content(streamed.text)[0] == REDACTED
    assert again.headers["x-llm-serve-cache"] == "hit" and again.json()["choices"][0]["message"]["content"] == REDACTED
    assert len(engines[A].bodies) == 1


def test_phone_regions_are_checked_at_load() -> None:
    from llm_serve.config import ConfigError

    assert PiiCheck(phone_region="gb").phone_region == "GB"
    with pytest.raises(ConfigError, match="not a region libphonenumber knows"):
        parse_config({"guardrails": {"policies": {"p": {"input": {"pii": {"phone_region": "XX"}}}}}})
