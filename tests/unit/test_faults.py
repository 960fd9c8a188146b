"""Faults answered quickly and losing nothing: a failing pool, a slow or dead state actor, a locked ledger.

Before, requests for a pool whose replica had died waited in Serve's queue until the client gave up;
a slow ledger database stalled the state actor's loop, and a failed write was dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.serve.exceptions import BackPressureError

from llm_serve.config import ConfigError, parse_config
from llm_serve.router.ingress import Router
from llm_serve.router.ledger import Ledger, LedgerRow
from llm_serve.router.ledger_writer import LedgerWriter
from llm_serve.router.state import RouterState
from llm_serve.telemetry.sampling import RateLimited
from tests.unit.fakes import A, B, Engine, assert_openai_error, auth, awaitable, build, chat, keys_config

FAST_BREAKER = {"routing": {"breaker_failures": 2, "breaker_probe_interval_s": 0.1, "breaker_probe_timeout_s": 0.1}}


class Flaky(Engine):
    """Fails while `down` (as a dead replica does), answers otherwise; its health check follows suit."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.down = True
        self.hang_first = False

    def behaviour(self, name: str, body: Any) -> Any:
        if name == "check_health":
            return awaitable(None) if not self.down else asyncio.sleep(10)
        return self._results(body)

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        if self.hang_first:
            self.hang_first = False
            await asyncio.sleep(30)
        if self.down:
            raise RuntimeError("replica died")
        async for item in super()._results(body):
            yield item


async def test_a_failing_pool_gets_fast_503s_with_retry_after_and_recovers_without_a_restart() -> None:
    engine = Flaky(A)
    client, _, _ = build(FAST_BREAKER, engines={A: engine, B: Engine(B)})
    async with client:
        for _ in range(2):
            assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 503, "engine_unavailable")
        calls = len(engine.calls)
        started = time.monotonic()
        refused = await client.post("/v1/chat/completions", json=chat())
        assert_openai_error(refused, 503, "engine_unavailable")
        assert time.monotonic() - started < 0.5 and refused.headers["retry-after"] == "1"
        assert len(engine.calls) == calls, "a down pool is not called at all"
        engine.down = False
        await asyncio.sleep(0.3)  # a probe passes
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_requests_waiting_on_a_pool_are_released_when_it_goes_down() -> None:
    engine = Flaky(A)
    engine.hang_first = True
    client, _, _ = build(FAST_BREAKER, engines={A: engine, B: Engine(B)})
    async with client:
        waiting = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        for _ in range(2):  # these fail and open the breaker
            await client.post("/v1/chat/completions", json=chat())
        released = await asyncio.wait_for(waiting, 5)
    assert_openai_error(released, 503, "engine_unavailable")
    assert time.monotonic() - started < 2, "not held until its 30 s engine call or the request timeout"


async def test_a_down_pool_hands_its_requests_to_the_fallback() -> None:
    engine = Flaky(A)
    client, _, _ = build(
        {**FAST_BREAKER, "routing": {**FAST_BREAKER["routing"], "fallbacks": {A: [B]}}},
        engines={A: engine, B: Engine(B)},
    )
    async with client:
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=chat())
            assert resp.status_code == 200 and resp.headers["x-llm-serve-model"] == B
    assert len(engine.calls) == 2, "after the breaker opened, A is skipped"


async def test_back_pressure_is_503_overloaded_and_not_a_broken_pool() -> None:
    class Full(Engine):
        def behaviour(self, name: str, body: Any) -> Any:
            if name == "check_health":
                return awaitable(None)
            return self._full()

        async def _full(self) -> AsyncIterator[Any]:
            raise BackPressureError(num_queued_requests=8, max_queued_requests=8)
            yield  # pragma: no cover

    client, _, _ = build(FAST_BREAKER, engines={A: Full(A), B: Engine(B)})
    async with client:
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=chat())
            assert_openai_error(resp, 503, "overloaded")
            assert resp.headers["retry-after"] == "1"


class DeadState:
    """A router-state handle whose calls never answer (the actor is restarting)."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return FakeMethodNeverAnswering(self)


class FakeMethodNeverAnswering:
    def __init__(self, state: DeadState) -> None:
        self.state = state

    def remote(self, *args: Any) -> Any:
        self.state.calls += 1
        return asyncio.sleep(60)


async def test_limits_that_cannot_be_checked_admit_nothing_and_unsent_rows_wait_in_a_spool(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": [{"id": A, "source": "x"}],
            "embedding_models": [],
            "router": {"state_timeout_s": 0.2},
            **keys_config(rpm=10),
        }
    )
    router = Router(config, {A: Engine(A).handle}, {}, None, state=DeadState())
    app = router.build_asgi_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        limited = await client.post("/v1/chat/completions", json=chat(), headers=auth("alice"))
        assert_openai_error(limited, 503, "state_unavailable")
        free = await client.post("/v1/chat/completions", json=chat(), headers=auth("admin"))  # no limits: no admit
        assert free.status_code == 200
    assert len(router.settle.spool) == 2, "both rows are kept for the state actor, none dropped"
    assert router.settle.spool.path.exists()


def test_a_locked_ledger_delays_rows_but_loses_none(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    real = ledger.insert_many
    broken = {"left": 3}

    def flaky(rows: list[LedgerRow]) -> int:
        if broken["left"]:
            broken["left"] -= 1
            raise OSError("database is locked")
        return real(rows)

    ledger.insert_many = flaky  # type: ignore[method-assign]
    writer = LedgerWriter(ledger, tmp_path / "spool.jsonl")
    started = time.monotonic()
    for i in range(5):
        writer.submit(LedgerRow(f"r{i}", "k", "chat", "m", cost_usd=0.5))
    assert time.monotonic() - started < 0.1, "submitting never waits for the database"
    assert writer.pending_spend("k", 0) == pytest.approx(2.5), "spend counts rows not yet written"
    assert writer.drain(10) and writer.failures == 3
    assert [r["request_id"] for r in ledger.rows()] == [f"r{i}" for i in range(4, -1, -1)]
    assert (tmp_path / "spool.jsonl").read_text() == "", "the spool empties once everything is written"
    writer.close()


def test_rows_spooled_by_a_killed_writer_are_written_once_by_the_next(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    spool = tmp_path / "spool.jsonl"
    rows = [LedgerRow(f"r{i}", "k", "chat", "m") for i in range(3)]
    ledger.insert_many(rows[:1])  # the first made it to the database before the crash
    spool.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    writer = LedgerWriter(ledger, spool)
    assert writer.drain(10)
    assert sorted(r["request_id"] for r in ledger.rows()) == ["r0", "r1", "r2"]
    writer.close()


async def test_a_state_restart_keeps_the_budget(tmp_path: Path) -> None:
    config = parse_config({"models": [{"id": A, "source": "x"}], "embedding_models": []})
    first = RouterState(config)
    await first.record(LedgerRow("r", "alice", "chat", A, cost_usd=0.9))
    # No drain: the row may still be in the spool only when the actor dies.
    second = RouterState(config)
    refusal = await second.admit("alice", budget_usd=1.0, budget_period="total", usd=0.2)
    assert refusal["code"] == "insufficient_quota"


def test_a_non_loopback_endpoint_needs_keys_or_an_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        parse_config({"server": {"host": "0.0.0.0"}})
    assert parse_config({"server": {"host": "0.0.0.0", "allow_unauthenticated": True}})
    assert parse_config({"server": {"host": "::1"}})


async def test_an_open_non_loopback_endpoint_keeps_admin_routes_closed() -> None:
    client, _, _ = build({"server": {"host": "0.0.0.0", "allow_unauthenticated": True}})
    async with client:
        for path in ("/admin/requests", "/admin/usage", "/admin/traces"):
            assert_openai_error(await client.get(path), 403, "admin_only")
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200


def test_a_callers_sampled_traceparent_is_followed_only_up_to_a_rate() -> None:
    from opentelemetry.sdk.trace.sampling import Decision

    sampler = RateLimited(max_per_s=3)
    decisions = [sampler.should_sample(None, i, "chat").decision for i in range(10)]
    assert decisions.count(Decision.RECORD_AND_SAMPLE) == 3
    time.sleep(0.4)
    assert sampler.should_sample(None, 11, "chat").decision == Decision.RECORD_AND_SAMPLE


async def test_past_its_limit_a_router_refuses_at_once_and_the_accepted_keep_their_pace() -> None:
    client, engines, _ = build(
        {"router": {"max_inflight_requests": 2}}, engines={A: Engine(A, delay_s=0.5), B: Engine(B)}
    )
    async with client:
        started = time.monotonic()
        tasks = [asyncio.create_task(client.post("/v1/chat/completions", json=chat())) for _ in range(2)]
        await asyncio.sleep(0.1)
        refused = [await client.post("/v1/chat/completions", json=chat()) for _ in range(3)]
        assert time.monotonic() - started < 0.4, "refusals do not wait for the requests in flight"
        accepted = await asyncio.gather(*tasks)
    assert [r.status_code for r in accepted] == [200, 200]
    for resp in refused:
        assert_openai_error(resp, 503, "overloaded")
        assert resp.headers["retry-after"] == "1"
    assert len(engines[A].calls) == 2


async def test_one_replica_death_opens_the_breaker_when_no_replica_answers_the_probe() -> None:
    from ray.exceptions import RayActorError

    class Dead(Flaky):
        async def _results(self, body: Any) -> AsyncIterator[Any]:
            raise RayActorError()
            yield  # pragma: no cover

    engine = Dead(A)
    config = {"routing": {"breaker_failures": 5, "breaker_probe_interval_s": 0.1, "breaker_probe_timeout_s": 0.2}}
    client, _, _ = build(config, engines={A: engine, B: Engine(B)})
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 503, "engine_unavailable")
        await asyncio.sleep(0.4)  # the probe after the death gets no answer
        calls = len(engine.calls)
        assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 503, "engine_unavailable")
        assert len(engine.calls) == calls, "one death and a silent pool: it is down, not called again"
