"""A quantized pool (W8A8, made at pull time) served next to the full-precision one on the live stack.

How fast and how good it is lives in benchmarks/quantized.py; here: it is the quantized checkpoint vLLM
runs, it answers every API the full-precision pool does, and it is priced at its own rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
QUANTIZED = "smollm2-135m-instruct-w8a8"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_the_pool_serves_the_quantized_checkpoint(stack) -> None:
    card = httpx.get(f"{stack.url}/v1/models/{QUANTIZED}", timeout=30).json()
    assert card["quantization"] == "w8a8-int8" and card["root"] == QUANTIZED
    assert "quantization" not in httpx.get(f"{stack.url}/v1/models/{stack.model}", timeout=30).json()
    from llm_serve.models import resolve_model_source

    served = Path(resolve_model_source(QUANTIZED, stack.config.home_path))
    qconfig = json.loads((served / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == "int-quantized"
    manifest = json.loads((served / "llm-serve-model.json").read_text())
    assert manifest["base"] == stack.model and manifest["weight_rel_error_mean"] < 0.02


def test_both_pools_answer_and_each_is_priced_at_its_rate(client, stack) -> None:
    costs, answers = {}, {}
    for model in (stack.model, QUANTIZED):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=QUESTION, max_tokens=24, temperature=0, extra_body={"cache": False}
        )
        resp = raw.parse()
        assert raw.headers["x-llm-serve-model"] == model
        answers[model] = resp.choices[0].message.content
        usage = resp.usage
        price = stack.config.model(model).price
        expected = (usage.prompt_tokens * price.input_per_1m + usage.completion_tokens * price.output_per_1m) / 1e6
        costs[model] = float(raw.headers["x-llm-serve-cost-usd"])
        assert costs[model] == pytest.approx(expected, rel=1e-6), model
    assert "Paris" in answers[QUANTIZED], answers  # the quantized model still knows what the bf16 one knows
    assert "Paris" in answers[stack.model], answers


def test_the_quantized_pool_streams_with_usage(client) -> None:
    stream = client.chat.completions.create(
        model=QUANTIZED,
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"cache": False},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
