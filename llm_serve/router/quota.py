"""Rate limits and budgets per key, with money and tokens reserved for requests in flight.

Admission reserves a request's worst case (its prompt plus `max_tokens` times its choices, at the
highest price of the pools it may land on) against the key's budget and tokens per minute, and
refuses it when that worst case would not fit. Settlement swaps the reservation for what the request
really used. So sixteen requests started at once against a budget for one see fifteen refusals, not
sixteen answers: only spend plus reservations is compared to the budget, and each check-and-reserve
is one uninterrupted call on the router-state actor.

A reservation that is never settled (its router replica died) lapses after `ttl_s`.

Pure logic, no I/O: the state actor owns one `Quotas` and loads each key's spend for a period from
the ledger (off its event loop) before the first admission that needs it (`begin_load` /
`finish_load`). Settlements that land while a load is in flight are added on top, so none is lost;
one that the load also saw is counted twice until the next period, an overestimate that only ever
refuses early.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from llm_serve.router.ledger import Period, period_start

WINDOW_S = 60.0


@dataclass
class Reservation:
    key: str
    tokens: int
    usd: float
    expires: float


@dataclass
class KeyQuota:
    """What admission needs to know about one key (its config, sent along with each admission)."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: Period = "month"


class Quotas:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}
        # key -> period -> (period start, spend since then); loaded from the ledger on first use.
        self._spend: dict[str, dict[Period, tuple[float, float]]] = {}
        self._loading: dict[tuple[str, Period], float] = {}  # spend settled while a load is in flight
        self._reservations: dict[str, dict[str, Reservation]] = {}  # key -> reservation id -> reservation

    # ---- admission ------------------------------------------------------------------------------

    def admit(self, key: KeyQuota, tokens: int = 0, usd: float = 0.0, now: float | None = None) -> dict[str, Any]:
        """`{"reservation": id}` when admitted (counted and reserved), else the refusal to send."""
        now = time.time() if now is None else now
        self._expire(now)
        held_tokens, held_usd = self.held(key.name)
        if key.budget_usd is not None:
            spent = self.spent(key.name, key.budget_period)
            if spent >= key.budget_usd:
                return _refusal(
                    "insufficient_quota",
                    f"You exceeded your budget of ${key.budget_usd:.4f} per {key.budget_period} (spent ${spent:.6f}).",
                )
            if spent + held_usd + usd > key.budget_usd:
                return _refusal(
                    "insufficient_quota",
                    f"This request could cost up to ${usd:.6f}, more than the ${key.budget_usd - spent - held_usd:.6f} "
                    f"left of your budget of ${key.budget_usd:.4f} per {key.budget_period} once the requests in "
                    "flight are paid for. Lower max_tokens or n.",
                )
        requests = self._window(self._requests, key.name, now)
        if key.rpm is not None and len(requests) >= key.rpm:
            return _limited(f"requests per minute ({key.rpm})", requests[0] + WINDOW_S - now)
        if key.tpm is not None:
            window = self._window(self._tokens, key.name, now)
            used = sum(n for _, n in window)
            if tokens > key.tpm:
                return _refusal(
                    "rate_limit_exceeded",
                    f"This request could use up to {tokens} tokens, more than your {key.tpm} tokens per minute. "
                    "Lower max_tokens or n.",
                )
            if used + held_tokens + tokens > key.tpm:
                return _limited(
                    f"tokens per minute ({key.tpm}; used {used}, {held_tokens} reserved in flight)",
                    self._tokens_free_in(window, used + held_tokens + tokens - key.tpm, now),
                )
        requests.append(now)
        reservation = uuid.uuid4().hex
        self._reservations.setdefault(key.name, {})[reservation] = Reservation(key.name, tokens, usd, now + self.ttl_s)
        return {"reservation": reservation}

    def held(self, key_name: str) -> tuple[int, float]:
        """Tokens and money reserved for this key's requests in flight."""
        held = self._reservations.get(key_name, {}).values()
        return sum(r.tokens for r in held), sum(r.usd for r in held)

    def spent(self, key_name: str, period: Period) -> float:
        """The key's spend this period (`finish_load` must have run for the period first)."""
        return self._spend[key_name][period][1]

    def begin_load(self, key_name: str, period: Period) -> float | None:
        """The period's start when its spend must be loaded now (and by this caller), else None."""
        start = period_start(period)
        cached = self._spend.get(key_name, {}).get(period)
        if (cached is not None and cached[0] == start) or (key_name, period) in self._loading:
            return None
        self._loading[(key_name, period)] = 0.0
        return start

    def finish_load(self, key_name: str, period: Period, start: float, spent: float | None) -> None:
        """Install a loaded spend (None: the load failed; the next admission tries again)."""
        settled_meanwhile = self._loading.pop((key_name, period), 0.0)
        if spent is not None:
            self._spend.setdefault(key_name, {})[period] = (start, spent + settled_meanwhile)

    def loaded(self, key_name: str, period: Period) -> bool:
        cached = self._spend.get(key_name, {}).get(period)
        return cached is not None and cached[0] == period_start(period)

    # ---- settlement -----------------------------------------------------------------------------

    def settle(self, key_name: str, reservation: str | None, tokens: int, cost_usd: float, ts: float) -> None:
        """Release the request's reservation and count what it really used."""
        if reservation is not None:
            self._reservations.get(key_name, {}).pop(reservation, None)
        if tokens:
            self._window(self._tokens, key_name, ts).append((ts, tokens))
        periods = self._spend.get(key_name, {})
        for period, (start, spent) in periods.items():
            if ts >= start:
                periods[period] = (start, spent + cost_usd)
        for (key, period), settled in list(self._loading.items()):
            if key == key_name:
                self._loading[(key, period)] = settled + cost_usd

    # ---- internals ------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for held in self._reservations.values():
            for rid in [rid for rid, r in held.items() if r.expires <= now]:
                del held[rid]

    @staticmethod
    def _window(windows: dict[str, deque[Any]], key_name: str, now: float) -> deque[Any]:
        window = windows.setdefault(key_name, deque())
        while window and (window[0][0] if isinstance(window[0], tuple) else window[0]) <= now - WINDOW_S:
            window.popleft()
        return window

    @staticmethod
    def _tokens_free_in(window: deque[tuple[float, int]], excess: int, now: float) -> float:
        """Seconds until `excess` tokens of the window have aged out (a full window when they never will)."""
        for ts, n in window:
            excess -= n
            if excess <= 0:
                return ts + WINDOW_S - now
        return WINDOW_S


def _refusal(code: str, message: str, retry_after: int | None = None) -> dict[str, Any]:
    return {"status": 429, "code": code, "message": message, "retry_after": retry_after}


def _limited(what: str, wait_s: float) -> dict[str, Any]:
    wait = max(1, int(wait_s + 0.999))
    return _refusal("rate_limit_exceeded", f"Rate limit reached for {what}. Try again in {wait}s.", wait)
