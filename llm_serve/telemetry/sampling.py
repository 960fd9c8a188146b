"""A sampler that follows a caller's sampled `traceparent`, up to a rate.

A client chooses its own `traceparent`, and with it whether the trace is sampled. Followed without
a bound, a client could make every request traced and crowd everyone else's traces out of the
collector. So a sampled remote parent is honoured only up to `max_per_s` new traces a second in
this process (a token bucket); past it the span is not recorded, though the trace id still travels
on. Traces the router starts itself keep the configured ratio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult


class RateLimited(Sampler):
    def __init__(self, max_per_s: float, inner: Sampler = ALWAYS_ON) -> None:
        self.max_per_s = max_per_s
        self.inner = inner
        self._tokens = max_per_s
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def _take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.max_per_s, self._tokens + (now - self._at) * self.max_per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        result = self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if result.decision == Decision.DROP or self._take():
            return result
        return SamplingResult(Decision.DROP, None, result.trace_state)

    def get_description(self) -> str:
        return f"RateLimited({self.max_per_s}/s, {self.inner.get_description()})"
