"""The Batch API on the real stack with the unmodified openai SDK, with the router killed mid-batch.

The batch router (the `batch_router` fixture) is a Serve application of its own whose batch store no
other router reads. Its router replica is killed by pid while the batch runs; Serve starts a new one,
whose runner takes the batch over once the dead one's lease lapses and finishes it: every line answered
once, priced at the discount, in the ledger. Destructive (it kills a process), so it runs after the rest.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import uuid

import httpx
import openai
import pytest

from llm_serve import local_cluster as lc

pytestmark = [pytest.mark.integration, pytest.mark.destructive]

NONCE = uuid.uuid4().hex[:8]
LINES = 12


def wait_for(client: openai.OpenAI, batch_id: str, done, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
            if done(batch):
                return batch
        except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError):
            pass  # the router is restarting
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_batch_survives_its_router_being_killed(stack, batch_router) -> None:
    client = openai.OpenAI(base_url=f"{batch_router}/v1", api_key="not-needed", timeout=120, max_retries=0)
    lines = [
        {
            "custom_id": f"q-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": stack.model,
                "messages": [{"role": "user", "content": f"Give one word that rhymes with {word}. ({NONCE}-{i})"}],
                "max_tokens": 12,
                "temperature": 0,
                "cache": False,  # every line reaches the engine (the repeated words would be cache hits)
            },
        }
        for i, word in enumerate(["cat", "tree", "blue", "light", "rain", "stone"] * (LINES // 6))
    ]
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    uploaded = client.files.create(file=("rhymes.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2, 300, "the batch never got going")

    (pid,) = lc.replica_pids(stack.config, "batch", "router")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    # Interactive traffic on the suite's own router goes on meanwhile.
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": stack.model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4},
        )
    assert answer.status_code == 200, answer.text

    done = wait_for(client, batch.id, lambda b: b.status in {"completed", "failed"}, 900, "the batch did not finish")
    print(f"batch finished {time.monotonic() - killed_at:.0f} s after its router was killed")
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (LINES, LINES, 0)
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)  # each once
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in output)

    with httpx.Client(base_url=stack.url, timeout=60) as http:
        rows = http.get("/admin/requests", params={"limit": 500}).json()["data"]
    ours = {r["request_id"]: r for r in rows if r["request_id"].startswith(batch.id)}
    answered = {o["response"]["request_id"] for o in output}
    assert answered <= set(ours), "every answered line has its ledger row"
    for request_id in answered:
        row = ours[request_id]
        assert row["api"] == "batch" and row["cache"] not in {"hit", "semantic_hit"}
        price = stack.config.models[0].price
        full = price.cost(row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"])  # prefix cache
        assert row["cost_usd"] == pytest.approx(full / 2)
    assert done.model_extra["cost_usd"] == pytest.approx(sum(ours[r]["cost_usd"] for r in answered))


def test_an_embeddings_batch(stack, batch_router) -> None:
    client = openai.OpenAI(base_url=f"{batch_router}/v1", api_key="not-needed", timeout=120, max_retries=0)
    lines = [
        {
            "custom_id": f"e-{i}",
            "url": "/v1/embeddings",
            "method": "POST",
            "body": {"model": "all-minilm-l6-v2", "input": [f"text {i}", f"more text {i}"]},
        }
        for i in range(3)
    ]
    data = io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())
    uploaded = client.files.create(file=("texts.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_for(client, batch.id, lambda b: b.status in {"completed", "failed"}, 300, "no finish")
    assert done.status == "completed" and done.request_counts.completed == 3
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert [len(o["response"]["body"]["data"]) for o in output] == [2, 2, 2]
    assert len(output[0]["response"]["body"]["data"][0]["embedding"]) == 384
