"""How an upstream API's failure reaches the client, and what the router does with it.

An upstream's status is not the client's: a 401 from OpenAI means llm-serve's key is wrong, not the
caller's, so the client gets a 502 that says so (and a fallback pool is tried); a 429 is passed on
with the upstream's Retry-After, after the other candidates had their turn; a 400 about the request
itself (a context too long, a bad parameter) is the client's 400. Every message is redacted: the
upstream key, and anything shaped like a credential, never reaches a client, a log line or a span.
"""

from __future__ import annotations

import re
from typing import Any

from llm_serve.router.errors import OpenAIError

# Credential shapes an upstream may echo back (OpenAI's "Incorrect API key provided: sk-ab***wxyz").
CREDENTIAL = re.compile(r"(sk-[A-Za-z0-9_*\-]{4,}|Bearer\s+\S+|key-[A-Za-z0-9_*\-]{8,})", re.IGNORECASE)
MAX_MESSAGE_CHARS = 500


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return CREDENTIAL.sub("[redacted]", text)[:MAX_MESSAGE_CHARS]


class UpstreamError(Exception):
    """An upstream call that failed before its first output.

    `counts` says whether it counts against the pool's breaker (the upstream is broken or unreachable,
    not merely busy); `falls_back` whether the next candidate pool may answer instead.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        counts: bool,
        falls_back: bool = True,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.counts, self.falls_back, self.retry_after_s = counts, falls_back, retry_after_s

    def client_error(self) -> OpenAIError:
        headers = {"retry-after": str(max(1, round(self.retry_after_s)))} if self.retry_after_s is not None else None
        return OpenAIError(self.status, self.message, code=self.code, param=self.param, headers=headers)


def upstream_message(payload: Any, fallback: str) -> tuple[str, str | None, str | None]:
    """The message, code and param of an OpenAI- or Anthropic-shaped error body (or `fallback`)."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or fallback
            code = err.get("code") if isinstance(err.get("code"), str) else err.get("type")
            param = err.get("param") if isinstance(err.get("param"), str) else None
            return str(message), code if isinstance(code, str) else None, param
        if isinstance(err, str):
            return err, None, None
    return fallback, None, None


def from_status(
    status: int, payload: Any, model_id: str, secrets: tuple[str, ...], retry_after_s: float | None
) -> UpstreamError:
    """The router's reading of an upstream's non-2xx answer."""
    message, code, param = upstream_message(payload, f"HTTP {status}")
    message = redact(message, secrets)
    where = f"the upstream API of '{model_id}'"
    if status in (401, 403):
        # llm-serve's own credentials: the caller can do nothing about it, and their text may echo the key.
        return UpstreamError(
            502, f"{where} refused llm-serve's credentials (HTTP {status})", code="upstream_auth_failed", counts=True
        )
    if status == 429:
        return UpstreamError(
            429,
            f"{where} is rate limiting llm-serve: {message}",
            code="upstream_rate_limited",
            counts=False,
            retry_after_s=retry_after_s,
        )
    lowered = message.lower()
    too_long = ("context" in lowered and "length" in lowered) or "prompt is too long" in lowered
    code = redact(code, secrets) if code else None
    param = redact(param, secrets) if param else None
    if status in (400, 413, 422) and too_long:
        return UpstreamError(400, message, code="context_length_exceeded", counts=False, falls_back=False, param=param)
    if status in (400, 413, 422):
        return UpstreamError(status, message, code=code or "invalid_value", counts=False, falls_back=False, param=param)
    if status in (503, 529):
        # Anthropic's 529 says busy (like a 429); a 503 is what a gateway says for a service that is down.
        return UpstreamError(
            503,
            f"{where} is overloaded (HTTP {status}): {message}",
            code="upstream_overloaded",
            counts=status == 503,
            retry_after_s=retry_after_s,
        )
    return UpstreamError(502, f"{where} failed (HTTP {status}): {message}", code="upstream_error", counts=True)


def unreachable(model_id: str, exc: BaseException) -> UpstreamError:
    """A connection that failed or timed out: the exception's type only (its text can hold the URL)."""
    name = type(exc).__name__
    if "Timeout" in name:
        return UpstreamError(
            504,
            f"the upstream API of '{model_id}' did not answer in time ({name})",
            code="upstream_timeout",
            counts=True,
        )
    return UpstreamError(
        502, f"the upstream API of '{model_id}' is unreachable ({name})", code="upstream_unreachable", counts=True
    )


def busy(model_id: str) -> UpstreamError:
    """Every connection to the upstream is in use in this replica: this router is busy, the upstream is not
    at fault (nothing counts against its breaker)."""
    return UpstreamError(
        503,
        f"every connection to the upstream API of '{model_id}' is in use; try again shortly",
        code="overloaded",
        counts=False,
        retry_after_s=1.0,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from APIs and is read as absent)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
