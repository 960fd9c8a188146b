"""Bad input against the real stack: the right status, OpenAI's error body, no traceback, no hang."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration
TIMEOUT = httpx.Timeout(120.0)


def _post(stack, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{stack.base_url}{path}", timeout=TIMEOUT, **kwargs)


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"] and err["type"]
    assert "Traceback" not in resp.text
    return err


def test_unknown_model_is_404(client, stack) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nonexistent", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nonexistent")


def test_malformed_json_is_400(stack) -> None:
    err = _error(
        _post(stack, "/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}), 400
    )
    assert err["code"] == "invalid_json"


def test_invalid_body_is_422_naming_the_field(stack) -> None:
    err = _error(_post(stack, "/chat/completions", json={"model": stack.model, "messages": "not a list"}), 422)
    assert err["param"] == "messages"


def test_out_of_range_parameter_is_rejected(client, stack) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=stack.model, messages=[{"role": "user", "content": "hi"}], temperature=-1)


def test_prompt_longer_than_context_is_400(client, stack) -> None:
    long_prompt = "word " * 1500  # the test config has max_model_len 1024
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=stack.model, prompt=long_prompt, max_tokens=8)
    assert info.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=stack.model, messages=[{"role": "user", "content": long_prompt}])
    assert info.value.body["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413(stack) -> None:
    big = {"model": stack.model, "messages": [{"role": "user", "content": "x" * 100_000}]}
    err = _error(_post(stack, "/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large"


def test_stack_still_serves_after_bad_requests(client, stack) -> None:
    resp = client.chat.completions.create(
        model=stack.model, messages=[{"role": "user", "content": "Say ok."}], max_tokens=4
    )
    assert resp.choices[0].message.content
