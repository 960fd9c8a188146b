"""State every router replica must agree on: rate-limit windows, spend, the exact cache, the ledger.

It lives in one `router-state` Serve deployment (a single asyncio replica), and router replicas call
it through a handle; each method runs to completion without awaiting, so a check-and-count is atomic
across all routers without locks. One admission call and one record call per request (~1 ms each
here) is the price of limits that hold under concurrency. Nothing on its loop touches the database:
rows go through the ledger writer's spool and thread (ledger_writer.py), and spend is loaded in a
thread. Routers reach it through `StateClient`, whose typed methods work the same over a Serve handle
and, in unit tests, on an in-process object.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from llm_serve.config import Config
from llm_serve.router.exact_cache import ExactCache
from llm_serve.router.feedback_store import feedback_summary, record_feedback
from llm_serve.router.ledger import Ledger, LedgerRow, Period, period_start
from llm_serve.router.ledger_writer import LedgerWriter
from llm_serve.router.quota import KeyQuota, Quotas
from llm_serve.router.served_aliases import AliasTarget, alias_history, current_aliases, move_alias, rollback_alias

logger = logging.getLogger("llm_serve.router")

READ_DRAIN_S = 2.0  # how long a ledger read waits for rows still being written
RESERVATION_SLACK_S = 60.0  # a reservation outlives its request's longest possible life by this much
SEEN_ROWS = 100_000


def spool_path(config: Config) -> Path:
    """The ledger writer's spool: one per application and ledger (its rows belong to that database only)."""
    url = config.ledger.database_url(config.home_path)
    return (
        config.home_path / "spool" / f"{config.app_name}-ledger-{hashlib.sha256(url.encode()).hexdigest()[:12]}.jsonl"
    )


class RouterState:
    def __init__(self, config: dict[str, Any] | Config) -> None:
        self.config = config if isinstance(config, Config) else Config.model_validate(config)
        exact = self.config.cache.exact
        self.cache = ExactCache(exact.max_entries, exact.ttl_s, exact.max_total_bytes)
        ledger = self.config.ledger
        self.ledger = Ledger(ledger.database_url(self.config.home_path)) if ledger.enabled else None
        self.writer = LedgerWriter(self.ledger, spool_path(self.config)) if self.ledger is not None else None
        server = self.config.server
        self.quotas = Quotas(ttl_s=server.request_timeout_s + server.billing_grace_s + RESERVATION_SLACK_S)
        self._loads: dict[tuple[str, Period], asyncio.Event] = {}
        # Rows already taken, by row_id: a router that resends a row after a timeout must not double-bill.
        self._seen: OrderedDict[str, None] = OrderedDict()

    # ---- admission ------------------------------------------------------------------------------

    async def admit(
        self,
        key_name: str,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        budget_period: Period = "month",
        tokens: int = 0,
        usd: float = 0.0,
    ) -> dict[str, Any]:
        """`{"reservation": id}` when the request may go ahead (counted, worst case reserved), else the
        refusal to send (`code`, `message`, `retry_after`)."""
        if budget_usd is not None and not await self._spend_loaded(key_name, budget_period):
            return {
                "status": 503,
                "code": "ledger_unavailable",
                "message": "The ledger cannot be read, so the key's budget cannot be checked; try again shortly.",
                "retry_after": 1,
            }
        return self.quotas.admit(KeyQuota(key_name, rpm, tpm, budget_usd, budget_period), tokens, usd)

    async def _spend_loaded(self, key_name: str, period: Period) -> bool:
        """Load the key's spend for the period from the ledger, off the event loop, once."""
        if self.quotas.loaded(key_name, period):
            return True
        start = self.quotas.begin_load(key_name, period)
        if start is None:  # another admission is loading it: wait for that one
            event = self._loads.get((key_name, period))
            if event is not None:
                await event.wait()
            return self.quotas.loaded(key_name, period)
        event = self._loads[(key_name, period)] = asyncio.Event()
        spent: float | None = 0.0
        try:
            if self.ledger is not None and self.writer is not None:
                pending = self.writer.pending_spend(key_name, start)  # before the read: never missed
                spent = pending + await asyncio.to_thread(self.ledger.spend, key_name, start)
        except Exception as exc:  # fail closed: an unknown spend admits nothing against a budget
            logger.error("could not read %s's spend from the ledger (%s: %s)", key_name, type(exc).__name__, exc)
            spent = None
        finally:
            self.quotas.finish_load(key_name, period, start, spent)
            event.set()
            self._loads.pop((key_name, period), None)
        return spent is not None

    # ---- accounting -----------------------------------------------------------------------------

    async def record(self, entry: LedgerRow, reservation: str | None = None) -> None:
        """Release the request's reservation, count what it used, and hand its row to the ledger writer
        (spooled at once, written off this loop). A row seen before (a retry) is taken once."""
        if entry.row_id in self._seen:
            return
        self._seen[entry.row_id] = None
        if len(self._seen) > SEEN_ROWS:
            self._seen.popitem(last=False)
        tokens = entry.prompt_tokens + entry.completion_tokens
        self.quotas.settle(entry.key_name, reservation, tokens, entry.cost_usd, entry.ts)
        if self.writer is not None:
            self.writer.submit(entry)

    async def _read(self, fn: Any, *args: Any) -> Any:
        """A ledger read that sees every row settled so far (waits briefly for the writer), off the loop."""
        if self.writer is not None:
            await asyncio.to_thread(self.writer.drain, READ_DRAIN_S)
        return await asyncio.to_thread(fn, *args)

    async def usage(
        self, period: Period = "month", key_name: str | None = None, since: float | None = None
    ) -> dict[str, Any]:
        start = since if since is not None else period_start(period)
        rows = await self._read(lambda: self.ledger.usage(start, key_name=key_name)) if self.ledger else []
        return {"object": "usage", "period": period, "since": start, "data": rows}

    async def recent(
        self, limit: int = 100, key_name: str | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._read(self.ledger.rows, limit, key_name, request_id) if self.ledger else []

    async def feedback(self, key_name: str, request_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Merge feedback into the key's request (after the rows still being written: a client that sends
        feedback the moment its answer arrives finds its request); None when the key has no such request."""
        if self.ledger is None:
            return None
        return await self._read(record_feedback, self.ledger.engine, key_name, request_id, fields)

    async def feedback_summary(self, period: Period = "month", key_name: str | None = None) -> list[dict[str, Any]]:
        if self.ledger is None:
            return []
        return await asyncio.to_thread(feedback_summary, self.ledger.engine, period_start(period), key_name)

    # ---- served aliases (router/served_aliases.py): read from the database on every call ------------

    async def aliases(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(current_aliases, self.ledger.engine) if self.ledger else {}

    async def alias_history(self, alias: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(alias_history, self.ledger.engine, alias) if self.ledger else []

    async def move_alias(
        self,
        alias: str,
        target: AliasTarget,
        by: str,
        note: str | None = None,
        evaluation: str | None = None,
        expected: int | None = None,
    ) -> dict[str, Any] | None:
        if self.ledger is None:
            raise RuntimeError("served aliases need the ledger (ledger.enabled: true)")
        return await asyncio.to_thread(
            lambda: move_alias(
                self.ledger.engine, alias, target, by=by, note=note, evaluation=evaluation, expected=expected
            )
        )

    async def rollback_alias(self, alias: str, by: str, note: str | None = None) -> dict[str, Any] | None:
        if self.ledger is None:
            return None
        return await asyncio.to_thread(lambda: rollback_alias(self.ledger.engine, alias, by=by, note=note))

    async def ledger_status(self) -> dict[str, Any]:
        """What the writer holds back: rows waiting for the database, and failed attempts so far."""
        if self.writer is None:
            return {"enabled": False}
        return {"enabled": True, "pending": len(self.writer.pending()), "failures": self.writer.failures}

    # ---- exact cache ----------------------------------------------------------------------------

    async def cache_get(self, key: str) -> Any | None:
        return self.cache.get(key)

    async def cache_put(self, key: str, value: Any, size: int = 0) -> None:
        self.cache.put(key, value, size)

    async def cache_stats(self) -> dict[str, int]:
        return self.cache.stats()

    async def check_health(self) -> None:
        return None


class StateUnavailable(RuntimeError):
    """The router-state actor did not answer in time (restarting, overloaded) or failed."""


class StateClient:
    """The router's typed view of RouterState: the same calls over a Serve handle or on an in-process object.

    Every call is bounded by `timeout_s`: a slow or dead actor is a `StateUnavailable`, never a hang.
    """

    def __init__(self, target: Any, timeout_s: float = 10.0) -> None:
        self._target = target
        self._remote = not isinstance(target, RouterState)
        self.timeout_s = timeout_s

    async def _call(self, method: str, *args: Any, detached: bool = False) -> Any:
        """One call to the state; `detached`: not a child of the Serve request it is made in.

        Serve cancels every handle call a request made (its children, found through the request context
        that the call's contextvars carry) when that request is cancelled, e.g. because its client left.
        A settlement's `record` runs at exactly that moment and must outlive the request, so it is issued
        from an empty context, which has no parent request.
        """
        if not self._remote:
            call = getattr(self._target, method)(*args)
        elif detached:
            call = contextvars.Context().run(getattr(self._target, method).remote, *args)
        else:
            call = getattr(self._target, method).remote(*args)
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError:
            raise StateUnavailable(f"router-state did not answer {method} within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise StateUnavailable(f"router-state failed on {method}: {type(exc).__name__}: {exc}") from exc

    async def admit(self, key: KeyQuota, tokens: int, usd: float) -> dict[str, Any]:
        """`{"reservation": id}` when admitted, else the refusal (status, code, message, retry_after)."""
        return await self._call("admit", key.name, key.rpm, key.tpm, key.budget_usd, key.budget_period, tokens, usd)

    async def record(self, row: LedgerRow, reservation: str | None = None) -> None:
        await self._call("record", row, reservation, detached=True)

    async def usage(self, period: Period, key_name: str | None = None) -> dict[str, Any]:
        return await self._call("usage", period, key_name)

    async def recent(
        self, limit: int, key_name: str | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        return await self._call("recent", limit, key_name, request_id)

    async def feedback(self, key_name: str, request_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        return await self._call("feedback", key_name, request_id, fields)

    async def feedback_summary(self, period: Period, key_name: str | None = None) -> list[dict[str, Any]]:
        return await self._call("feedback_summary", period, key_name)

    async def aliases(self) -> dict[str, dict[str, Any]]:
        return await self._call("aliases")

    async def alias_history(self, alias: str) -> list[dict[str, Any]]:
        return await self._call("alias_history", alias)

    async def move_alias(
        self,
        alias: str,
        target: AliasTarget,
        by: str,
        note: str | None = None,
        evaluation: str | None = None,
        expected: int | None = None,
    ) -> dict[str, Any] | None:
        return await self._call("move_alias", alias, target, by, note, evaluation, expected)

    async def rollback_alias(self, alias: str, by: str, note: str | None = None) -> dict[str, Any] | None:
        return await self._call("rollback_alias", alias, by, note)

    async def cache_get(self, key: str) -> Any | None:
        return await self._call("cache_get", key)

    async def cache_put(self, key: str, value: Any, size: int) -> None:
        await self._call("cache_put", key, value, size)

    async def cache_stats(self) -> dict[str, int]:
        return await self._call("cache_stats")

    async def ledger_status(self) -> dict[str, Any]:
        return await self._call("ledger_status")
