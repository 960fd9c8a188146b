"""Run an evaluation set through a live OpenAI-compatible endpoint, a bounded number of requests at a time.

Nothing is retried: an evaluation is also a check that the endpoint answers, so a failure is a result
to report (with the server's own error), not something to hide behind a second attempt.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from llm_serve import headers
from llm_serve.eval.dataset import EvalRow
from llm_serve.eval.settings import API_KEY_ENVS, EvalOptions
from llm_serve.eval.variants import UsageError, Variant

ERROR_TEXT_CHARS = 300  # of a non-JSON error body: enough to recognise a proxy's HTML page


class EndpointUnreachable(UsageError):
    """No connection could be made at all: a wrong URL or a server that is down, not a failed row."""


def api_base(url: str) -> str:
    """`http://host:port`, `.../`, or `.../v1` all mean the same server: return its `.../v1`."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"endpoint {url!r} must be an http:// or https:// URL")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return f"{base}/v1"


def resolve_api_key(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    return next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)


@dataclass
class Answer:
    """What one request produced, success or not."""

    row_id: str
    answer: str | None = None
    latency_ms: float | None = None
    status: int | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    served_model: str | None = None  # x-llm-serve-model: the pool that answered, after aliases and fallbacks
    prompt_ref: str | None = None  # x-llm-serve-prompt: name@version+hash actually rendered
    sources: list[dict[str, Any]] | None = None
    retrieved_contexts: list[str] | None = None
    error: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["row_id"]  # the results row carries the dataset's id already
        if self.sources is not None:  # the chunk texts are already in retrieved_contexts
            out["sources"] = [{k: v for k, v in s.items() if k != "text"} for s in self.sources]
        return out


def request_body(row: EvalRow, variant: Variant, options: EvalOptions) -> dict[str, Any]:
    """The chat request for one row; `rag`, `prompt` and `cache` are llm-serve's extensions."""
    body: dict[str, Any] = {
        "model": variant.model,
        "temperature": options.temperature,
        "max_tokens": options.max_tokens,
    }
    if variant.prompt is not None:
        # The server puts the prompt's messages before any given ones; the prompt carries the question.
        body["messages"] = []
        body["prompt"] = variant.prompt.payload(row.prompt_variables())
    else:
        body["messages"] = [{"role": "user", "content": row.question}]
    if options.rag:
        body["rag"] = {"collection": options.rag, "include_text": True}
    if options.no_cache:
        body["cache"] = False
    return body


def _error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-style `{"error": {...}}` body when there is one, else the start of whatever came back."""
    error: dict[str, Any] = {"status": response.status_code, "type": None, "code": None}
    try:
        detail = response.json().get("error")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict):
        error.update(type=detail.get("type"), code=detail.get("code"), message=str(detail.get("message")))
    elif isinstance(detail, str):
        error["message"] = detail
    else:
        error["message"] = response.text[:ERROR_TEXT_CHARS] or response.reason_phrase
    return error


def _read_success(answer: Answer, response: httpx.Response, rag: bool) -> None:
    try:
        payload = response.json()
        message = payload["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        answer.error = {
            "status": response.status_code,
            "type": "bad_response",
            "code": None,
            "message": "the response is not a chat completion: " + response.text[:ERROR_TEXT_CHARS],
        }
        return
    answer.answer = message.get("content") or ""
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
    answer.usage = usage
    cost = (usage or {}).get("cost_usd", response.headers.get(headers.COST))
    try:
        answer.cost_usd = None if cost is None else float(cost)
    except (TypeError, ValueError):
        answer.cost_usd = None
    if rag:
        sources = payload.get("sources")
        answer.sources = sources if isinstance(sources, list) else []
        texts = [s.get("text") for s in answer.sources if isinstance(s, dict)]
        if not isinstance(sources, list) or any(not isinstance(t, str) for t in texts):
            # Without the chunk texts (a server without `include_text`) the context metrics cannot be
            # computed: leave them out and say so, rather than score retrieval 0.
            answer.notes.append("sources_without_text")
            answer.retrieved_contexts = None
        else:
            answer.retrieved_contexts = texts


async def ask(client: httpx.AsyncClient, url: str, row: EvalRow, variant: Variant, options: EvalOptions) -> Answer:
    answer = Answer(row_id=row.id)
    started = time.perf_counter()
    try:
        response = await client.post(url, json=request_body(row, variant, options))
    except httpx.HTTPError as exc:
        message = str(exc) or repr(exc)
        answer.error = {"status": None, "type": "transport", "code": type(exc).__name__, "message": message}
        return answer
    answer.latency_ms = (time.perf_counter() - started) * 1000.0
    answer.status = response.status_code
    answer.served_model = response.headers.get(headers.MODEL)
    answer.prompt_ref = response.headers.get(headers.PROMPT)
    if response.status_code != 200:
        answer.error = _error_of(response)
    else:
        _read_success(answer, response, rag=bool(options.rag))
    return answer


def http_client(options: EvalOptions, api_key: str | None, timeout_s: float | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout_s or options.timeout_s, connect=options.connect_timeout_s),
        limits=httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency),
    )


async def check_reachable(client: httpx.AsyncClient, base: str, what: str) -> None:
    """Fail fast, before any work, when nothing listens at `base`; any HTTP answer (even 401/404) will do."""
    try:
        await client.get(f"{base}/models")
    except httpx.InvalidURL as exc:
        raise UsageError(f"{what} {base!r} is not a valid URL: {exc}") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise EndpointUnreachable(f"cannot reach the {what} at {base}: {reason}") from None


async def answer_all(
    client: httpx.AsyncClient, base: str, rows: list[EvalRow], variant: Variant, options: EvalOptions
) -> list[Answer]:
    """Every row against one variant, in dataset order, at most `concurrency` at a time."""
    url = f"{base}/chat/completions"
    gate = asyncio.Semaphore(options.concurrency)
    bar = tqdm(total=len(rows), desc=f"answering {variant.label}", unit="q", disable=not options.progress, leave=False)

    async def one(row: EvalRow) -> Answer:
        async with gate:
            result = await ask(client, url, row, variant, options)
        bar.update(1)
        return result

    try:
        return list(await asyncio.gather(*(one(row) for row in rows)))
    finally:
        bar.close()
