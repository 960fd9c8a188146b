"""Guardrails on the live stack: the real SmolLM2 through vLLM, a router with per-key policies (conftest `guarded`).

Input checks act on what the caller sent, so they are asserted exactly (the 400, what the engine was
given). The output checks' triggers are a threshold every answer crosses (block, flag) and an e-mail
address the model is asked to repeat (redact): what the real model says varies, what the guardrail does
with it must not. Each request is looked up in the router's own ledger through /admin/requests.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

TOXIC = "You are a useless idiot and a moron, answer me now."
EMAIL = "jane.doe@example.com"
WAIT_S = 120


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 24,
        "temperature": 0,
        **extra,
    }


def ledger_row(guarded, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        resp = httpx.get(
            f"{guarded.url}/admin/requests", params={"request_id": request_id}, headers=guarded.headers("admin")
        )
        assert resp.status_code == 200, resp.text
        if resp.json()["data"]:
            return resp.json()["data"][0]
        assert time.monotonic() < deadline, f"no ledger row for {request_id}"
        time.sleep(1)


def post(guarded, key: str, body: dict[str, Any]) -> httpx.Response:
    """A request with an id of our own: Serve's proxy adds its own x-request-id to answers beside the router's."""
    headers = {**guarded.headers(key), "x-request-id": uuid.uuid4().hex}
    resp = httpx.post(f"{guarded.base_url}/chat/completions", json=body, headers=headers, timeout=300)
    resp.request_id = headers["x-request-id"]  # type: ignore[attr-defined]
    return resp


def sdk(guarded, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=guarded.base_url, api_key=f"sk-itest-{key}", timeout=300, max_retries=0)


def test_toxic_input_is_refused_streamed_or_not_and_costs_nothing(guarded) -> None:
    client = sdk(guarded, "screened")
    for stream in (False, True):
        request_id = uuid.uuid4().hex
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=guarded.model,
                messages=[{"role": "user", "content": TOXIC}],
                max_tokens=8,
                stream=stream,
                extra_headers={"x-request-id": request_id},
            )
        assert caught.value.code == "input_blocked" and "screen-input" in caught.value.message
        row = ledger_row(guarded, request_id)
        assert row["status"] == 400 and row["cost_usd"] == 0 and row["completion_tokens"] == 0
        assert row["guardrail"] == "input:toxicity=block"
    # Another key, no policy: the same words are answered.
    plain = post(guarded, "redacted", chat(guarded.model, TOXIC))
    assert plain.status_code == 200


def test_pii_in_the_input_never_reaches_the_engine(guarded) -> None:
    body = chat(guarded.model, f"Repeat this address exactly: {EMAIL}", max_tokens=32)
    resp = post(guarded, "screened", body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-llm-serve-guardrail"] == "input:pii=redact"
    assert EMAIL not in resp.json()["choices"][0]["message"]["content"]  # the model never saw it
    assert ledger_row(guarded, resp.request_id)["guardrail"] == "input:pii=redact"


def test_pii_in_an_answer_is_redacted_streamed_and_not(guarded) -> None:
    body = chat(guarded.model, f"Repeat this address exactly: {EMAIL}", max_tokens=32)
    whole = post(guarded, "redacted", body)
    assert whole.status_code == 200, whole.text
    answer = whole.json()["choices"][0]["message"]["content"]
    streamed = sdk(guarded, "redacted").chat.completions.create(**{**body, "stream": True})
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    for said in (answer, text):
        assert EMAIL not in said and "jane.doe@" not in said
    assert text == answer  # the same greedy answer, redacted the same way whole or chunk by chunk
    if "[EMAIL]" in answer:  # the model repeated the address (SmolLM2 does, greedily): it was caught
        assert ledger_row(guarded, whole.request_id)["guardrail"] == "output:pii=redact"


def test_a_blocked_answer_is_a_400_or_a_refusal_and_billed(guarded) -> None:
    body = chat(guarded.model, "What is the capital of France?")
    resp = post(guarded, "blocked", body)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "output_blocked", resp.text
    row = ledger_row(guarded, resp.request_id)
    assert row["completion_tokens"] > 0 and row["cost_usd"] > 0 and row["guardrail"] == "output:toxicity=block"

    chunks = list(
        sdk(guarded, "blocked").chat.completions.create(
            **{**body, "max_tokens": 48}, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.endswith("Sorry, I cannot answer that.") and finishes == ["content_filter"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0


def test_a_flag_passes_the_answer_and_marks_it(guarded) -> None:
    body = chat(guarded.model, "What is the capital of France?")
    resp = post(guarded, "flagged", body)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]
    assert resp.headers["x-llm-serve-guardrail"] == "output:toxicity=flag"
    streamed = post(guarded, "flagged", {**body, "stream": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert "content_filter" not in streamed.text
    assert ledger_row(guarded, streamed.request_id)["guardrail"] == "output:toxicity=flag"
