"""State every router replica must agree on: rate-limit windows, spend, the exact cache, the ledger.

It lives in one `router-state` Serve deployment (a single asyncio replica), and router replicas call
it through a handle; each method runs to completion without awaiting, so a check-and-count is atomic
across all routers without locks. One admission call and one record call per request (~1 ms each
here) is the price of limits that hold under concurrency. Routers reach it through `StateClient`,
whose typed methods work the same over a Serve handle and, in unit tests, on an in-process object.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from llm_serve.config import Config
from llm_serve.router.exact_cache import ExactCache
from llm_serve.router.ledger import Ledger, LedgerRow, Period, default_url, period_start

logger = logging.getLogger("llm_serve.router")

WINDOW_S = 60.0


class RouterState:
    def __init__(self, config: dict[str, Any] | Config) -> None:
        self.config = config if isinstance(config, Config) else Config.model_validate(config)
        exact = self.config.cache.exact
        self.cache = ExactCache(exact.max_entries, exact.ttl_s)
        ledger = self.config.ledger
        self.ledger = Ledger(ledger.url or default_url(self.config.home_path)) if ledger.enabled else None
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        # key -> period -> (period start, spend since then); loaded from the ledger on first use.
        self._spend: dict[str, dict[Period, tuple[float, float]]] = {}

    # ---- admission ------------------------------------------------------------------------------

    async def admit(
        self,
        key_name: str,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        budget_period: Period = "month",
    ) -> dict[str, Any] | None:
        """None when the request may go ahead (and it is counted), else the refusal to send."""
        now = time.time()
        if budget_usd is not None:
            spent = self._spent(key_name, budget_period)
            if spent >= budget_usd:
                return {
                    "status": 429,
                    "code": "insufficient_quota",
                    "message": f"You exceeded your budget of ${budget_usd:.4f} per {budget_period} "
                    f"(spent ${spent:.6f}).",
                    "retry_after": None,
                }
        requests = self._requests.setdefault(key_name, deque())
        while requests and requests[0] <= now - WINDOW_S:
            requests.popleft()
        if rpm is not None and len(requests) >= rpm:
            return self._limited(f"requests per minute ({rpm})", requests[0] + WINDOW_S - now)
        if tpm is not None:
            tokens = self._tokens.setdefault(key_name, deque())
            while tokens and tokens[0][0] <= now - WINDOW_S:
                tokens.popleft()
            used = sum(n for _, n in tokens)
            if used >= tpm:
                # Wait until enough of the window's tokens age out to fall under the limit.
                excess, wait = used - tpm, WINDOW_S
                for ts, n in tokens:
                    excess -= n
                    if excess < 0:
                        wait = ts + WINDOW_S - now
                        break
                return self._limited(f"tokens per minute ({tpm}; used {used})", wait)
        requests.append(now)
        return None

    @staticmethod
    def _limited(what: str, wait_s: float) -> dict[str, Any]:
        wait = max(1, int(wait_s + 0.999))
        return {
            "status": 429,
            "code": "rate_limit_exceeded",
            "message": f"Rate limit reached for {what}. Try again in {wait}s.",
            "retry_after": wait,
        }

    def _spent(self, key_name: str, period: Period) -> float:
        start = period_start(period)
        periods = self._spend.setdefault(key_name, {})
        cached = periods.get(period)
        if cached is None or cached[0] != start:
            cached = periods[period] = (start, self.ledger.spend(key_name, start) if self.ledger else 0.0)
        return cached[1]

    # ---- accounting -----------------------------------------------------------------------------

    async def record(self, entry: LedgerRow) -> None:
        """Count tokens against the key's window, add the cost to its spend, and write the ledger row."""
        tokens = entry.prompt_tokens + entry.completion_tokens
        if tokens:
            now = time.time()
            window = self._tokens.setdefault(entry.key_name, deque())
            window.append((now, tokens))
            while window and window[0][0] <= now - WINDOW_S:  # bounded whether or not the key has a tpm
                window.popleft()
        periods = self._spend.get(entry.key_name, {})
        for period, (start, spent) in periods.items():
            if entry.ts >= start:
                periods[period] = (start, spent + entry.cost_usd)
        if self.ledger is not None:
            try:
                self.ledger.record(entry)
            except Exception:  # a ledger outage must not fail requests already served
                logger.exception("ledger write failed for request %s", entry.request_id)

    async def usage(
        self, period: Period = "month", key_name: str | None = None, since: float | None = None
    ) -> dict[str, Any]:
        start = since if since is not None else period_start(period)
        rows = self.ledger.usage(start, key_name=key_name) if self.ledger else []
        return {"object": "usage", "period": period, "since": start, "data": rows}

    async def recent(self, limit: int = 100, key_name: str | None = None) -> list[dict[str, Any]]:
        return self.ledger.rows(limit, key_name) if self.ledger else []

    # ---- exact cache ----------------------------------------------------------------------------

    async def cache_get(self, key: str) -> Any | None:
        return self.cache.get(key)

    async def cache_put(self, key: str, value: Any) -> None:
        self.cache.put(key, value)

    async def cache_stats(self) -> dict[str, int]:
        return self.cache.stats()

    async def check_health(self) -> None:
        return None


class StateClient:
    """The router's typed view of RouterState: the same calls over a Serve handle or on an in-process object."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self._remote = not isinstance(target, RouterState)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._remote:
            return await getattr(self._target, method).remote(*args)
        return await getattr(self._target, method)(*args)

    async def admit(
        self, key_name: str, rpm: int | None, tpm: int | None, budget_usd: float | None, budget_period: Period
    ) -> dict[str, Any] | None:
        """None when admitted (and counted), else the refusal (status, code, message, retry_after)."""
        return await self._call("admit", key_name, rpm, tpm, budget_usd, budget_period)

    async def record(self, row: LedgerRow) -> None:
        await self._call("record", row)

    async def usage(self, period: Period, key_name: str | None = None) -> dict[str, Any]:
        return await self._call("usage", period, key_name)

    async def recent(self, limit: int, key_name: str | None = None) -> list[dict[str, Any]]:
        return await self._call("recent", limit, key_name)

    async def cache_get(self, key: str) -> Any | None:
        return await self._call("cache_get", key)

    async def cache_put(self, key: str, value: Any) -> None:
        await self._call("cache_put", key, value)

    async def cache_stats(self) -> dict[str, int]:
        return await self._call("cache_stats")
