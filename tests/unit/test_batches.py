"""The Files and Batch APIs over stand-in engines, through the unmodified openai SDK.

What must hold: a batch answers every line once, in OpenAI's output and error file formats, at the
discount; a malformed file fails the batch before anything runs; files and batches are per key;
cancel keeps what was answered; a batch whose runner stops is resumed by another router over the same
database, no answered line sent again (only a line cut off in flight runs twice); and a runner starts
no line while interactive requests are in flight. The live-stack version (SmolLM2, a real restart)
is tests/integration/test_batches.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llm_serve.config import parse_config
from llm_serve.router.batches.store import BatchStore
from llm_serve.router.ledger import default_url
from tests.unit.fakes import KEYS, A, Engine, build_app, keys_config

FAST = {"batch": {"poll_s": 0.05, "lease_s": 1.0, "retry_backoff_s": 0.05}}


def sdk(app: Any, key: str = "sk-none") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http, max_retries=0)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[None]:
    """The app's lifespan, as Serve runs it in a replica (httpx's transport does not): its batch runner."""
    async with app.router.lifespan_context(app):
        yield


def jsonl(lines: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO(("\n".join(json.dumps(line) for line in lines) + "\n").encode())


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": A, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 8, **body},
    }


async def until(client: openai.AsyncOpenAI, batch_id: str, statuses: set[str], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        await asyncio.sleep(0.05)


async def file_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_a_batch_answers_every_line_in_openai_formats_at_the_discount() -> None:
    app, engines, state = build_app(FAST)
    client = sdk(app)
    lines = [chat_line(i) for i in range(4)] + [chat_line(4, messages=[])]  # the last: a 400 of its own
    async with running(app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        assert (uploaded.purpose, uploaded.filename, uploaded.object) == ("batch", "in.jsonl", "file")
        batch = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
        done = await until(client, batch.id, {"completed", "failed"})
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 4, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    output = await file_lines(client, done.output_file_id)
    assert [o["custom_id"] for o in output] == ["req-0", "req-1", "req-2", "req-3"]
    first = output[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["choices"][0]["message"]["content"] == f"answer from {A}"
    (error,) = await file_lines(client, done.error_file_id)
    assert error["custom_id"] == "req-4" and error["response"]["status_code"] in {400, 422}
    assert error["error"]["message"]
    assert len(engines[A].calls) == 4  # the bad line never reached the engine
    rows = [r for r in await state.recent(100) if r["api"] == "batch"]
    assert len(rows) == 5 and {r["request_id"] for r in rows} == {f"{batch.id}-{n}" for n in range(1, 6)}
    full = (5 * 1.0 + 1 * 2.0) / 1e6  # the fake answers 5 prompt and 1 completion tokens; model A's price
    answered = [r for r in rows if r["status"] == 200]
    assert all(r["cost_usd"] == pytest.approx(full / 2) for r in answered), "the 50 % batch discount"
    assert done.model_extra["cost_usd"] == pytest.approx(4 * full / 2)
    with pytest.raises(openai.APIStatusError) as err:  # a completed batch cannot be cancelled
        await client.batches.cancel(batch.id)
    assert err.value.status_code == 409


async def test_a_malformed_file_fails_the_batch_before_anything_runs() -> None:
    app, engines, _ = build_app(FAST)
    client = sdk(app)
    lines = [chat_line(0), {**chat_line(0)}, {**chat_line(2), "url": "/v1/embeddings"}]
    async with running(app):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        failed = await until(client, batch.id, {"failed", "completed"})
    assert failed.status == "failed" and failed.failed_at
    codes = [(e.code, e.line) for e in failed.errors.data]
    assert codes == [("duplicate_custom_id", 2), ("mismatched_endpoint", 3)]
    assert engines[A].calls == []


async def test_files_and_batches_belong_to_their_key() -> None:
    app, _, _ = build_app({**FAST, **keys_config()})
    alice, bob = sdk(app, KEYS["alice"]), sdk(app, KEYS["bob"])
    uploaded = await alice.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
    batch = await alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        bob.files.retrieve(uploaded.id),
        bob.files.content(uploaded.id),
        bob.files.delete(uploaded.id),
        bob.batches.retrieve(batch.id),
        bob.batches.cancel(batch.id),
        bob.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert [f.id async for f in bob.files.list()] == []
    assert [b.id async for b in alice.batches.list()] == [batch.id]


async def test_cancel_keeps_what_was_answered() -> None:
    slow = {A: Engine(A, delay_s=0.2)}
    app, engines, _ = build_app({"batch": {**FAST["batch"], "concurrency": 1}}, engines=slow)
    client = sdk(app)
    async with running(app):
        uploaded = await client.files.create(
            file=("in.jsonl", jsonl([chat_line(i) for i in range(20)])), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await until(client, batch.id, {"in_progress"})
        while (await client.batches.retrieve(batch.id)).request_counts.completed < 2:
            await asyncio.sleep(0.05)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = await until(client, batch.id, {"cancelled"})
    counts = done.request_counts
    assert 2 <= counts.completed < 20 and counts.completed + counts.failed == 20
    assert len(await file_lines(client, done.output_file_id)) == counts.completed == len(engines[A].calls)
    errors = await file_lines(client, done.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"} and len(errors) == counts.failed
    assert (await client.batches.cancel(batch.id)).status == "cancelled"  # idempotent once cancelled


async def test_a_batch_outlives_its_runner_and_no_line_runs_twice() -> None:
    """The first router's runner dies mid-batch (its lease left to lapse); a second router over the same
    database takes the batch over and finishes it."""
    first_engine, second_engine = Engine(A, delay_s=0.05), Engine(A)
    first, _, _ = build_app({"batch": {**FAST["batch"], "concurrency": 1}}, engines={A: first_engine})
    client = sdk(first)
    lines = [chat_line(i) for i in range(12)]
    async with running(first):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        while (await client.batches.retrieve(batch.id)).request_counts.completed < 3:
            await asyncio.sleep(0.02)
    # The lifespan ended (the replica stopped): its runner was cancelled, the line in flight cut off.
    answered_before = (await client.batches.retrieve(batch.id)).request_counts.completed
    assert answered_before < 12
    second, _, _ = build_app(FAST, engines={A: second_engine})
    other = sdk(second)
    async with running(second):
        done = await until(other, batch.id, {"completed"})
    output = await file_lines(other, done.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(line["custom_id"] for line in lines)
    assert done.request_counts.completed == 12 and done.request_counts.failed == 0
    assert len(second_engine.calls) == 12 - answered_before  # nothing answered before is sent again
    assert len(first_engine.calls) - answered_before in {0, 1}  # at most the one cut off in flight


async def test_a_crashed_runners_lease_lapses_and_another_takes_over() -> None:
    app, _, _ = build_app(FAST)
    client = sdk(app)
    uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0), chat_line(1)])), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    store = BatchStore(default_url(parse_config({"models": [{"id": A, "source": "x"}]}).home_path))
    assert store.claim("a-crashed-runner", 0.3) is not None  # claimed, and never renewed or released
    assert store.claim("another", 30) is None  # held
    second, _, _ = build_app(FAST)
    async with running(second):
        done = await until(sdk(second), batch.id, {"completed"})
    assert done.request_counts.completed == 2


async def test_no_batch_line_starts_while_interactive_requests_are_in_flight() -> None:
    engine = Engine(A, delay_s=1.0)
    app, _, _ = build_app(FAST, engines={A: engine})
    client = sdk(app)
    uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
    async with running(app):
        interactive = asyncio.create_task(
            client.chat.completions.create(model=A, messages=[{"role": "user", "content": "now"}])
        )
        await asyncio.sleep(0.1)
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(0.6)
        assert len(engine.calls) == 1, "the batch line waited for the interactive request"
        await interactive
        done = await until(client, batch.id, {"completed"})
    assert done.request_counts.completed == 1 and len(engine.calls) == 2


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"endpoint": "/v1/images", "completion_window": "24h"}, 400),
        ({"endpoint": "/v1/chat/completions", "completion_window": "1h"}, 400),
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h", "input_file_id": "file-nope"}, 404),
    ],
)
async def test_bad_batch_requests_are_refused(kwargs: dict[str, Any], status: int) -> None:
    app, _, _ = build_app(FAST)
    client = sdk(app)
    uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
    with pytest.raises(openai.APIStatusError) as err:
        await client.batches.create(**{"input_file_id": uploaded.id, **kwargs})
    assert err.value.status_code == status


async def test_uploads_are_checked() -> None:
    app, _, _ = build_app({"batch": {"max_file_bytes": 2048}})
    client = sdk(app)
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as err:
        await client.files.create(file=("big.jsonl", io.BytesIO(b"x" * 4096)), purpose="batch")
    assert err.value.status_code == 413
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    assert (await http.post("/v1/files", json={"purpose": "batch"})).status_code == 400
    uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
    assert (await client.files.retrieve(uploaded.id)).bytes == len(jsonl([chat_line(0)]).getvalue())
    await client.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)
