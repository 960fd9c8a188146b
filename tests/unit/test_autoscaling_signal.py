"""The autoscaling signals of an engine pool: the policy's decisions, the engine's load report, the config."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from llm_serve.config import ConfigError, parse_config
from llm_serve.engine.autoscaling import KV_CACHE, POLICY_PATH, RUNNING, WAITING, EngineSignalPolicy
from llm_serve.engine.pool import deployment_options


def ctx(
    replicas: int, metrics: dict[str, dict[str, float]] | None, ongoing: float = 0.0, wanted: int | None = None
) -> Any:
    """The parts of Serve's AutoscalingContext the policy reads (`wanted`: the target, starting ones included)."""
    config = SimpleNamespace(get_target_ongoing_requests=lambda: 4.0)
    return SimpleNamespace(current_num_replicas=replicas, target_num_replicas=replicas if wanted is None else wanted,
                           aggregated_metrics=metrics, total_num_requests=ongoing, config=config)  # fmt: skip


def test_kv_cache_signal_holds_the_mean_use_near_its_target() -> None:
    policy = EngineSignalPolicy("kv_cache", 0.6)
    assert policy(ctx(2, {KV_CACHE: {"a": 0.9, "b": 0.9}}))[0] == pytest.approx(3.0)  # 2 * 0.9 / 0.6
    assert policy(ctx(2, {KV_CACHE: {"a": 0.15, "b": 0.15}}))[0] == pytest.approx(0.5)  # Serve clamps to min
    assert policy(ctx(1, {KV_CACHE: {"a": 0.6}}))[0] == pytest.approx(1.0)


def test_waiting_signal_adds_on_a_queue_and_removes_only_when_the_rest_fits() -> None:
    policy = EngineSignalPolicy("waiting_requests", 1.0, max_num_seqs=8)
    assert policy(ctx(1, {WAITING: {"a": 3}, RUNNING: {"a": 8}}))[0] == 2
    assert policy(ctx(2, {WAITING: {"a": 1, "b": 1}, RUNNING: {"a": 8, "b": 8}}))[0] == 2  # at the target: hold
    assert policy(ctx(2, {WAITING: {"a": 0, "b": 0}, RUNNING: {"a": 3, "b": 0}}))[0] == 1  # 3 fit in 4 of 8
    # nothing waits, but 6 running would fill one replica past half its batch: hold, or the queue comes back
    assert policy(ctx(2, {WAITING: {"a": 0, "b": 0}, RUNNING: {"a": 3, "b": 3}}))[0] == 2
    # a second replica is starting and the queue of the running one sits at its target: keep the one starting
    # (returning the running count, 1, cancelled it in the multi-node test and took 357 s to scale up)
    assert policy(ctx(1, {WAITING: {"a": 1}, RUNNING: {"a": 2}}, wanted=2))[0] == 2
    assert policy(ctx(1, {WAITING: {"a": 3}, RUNNING: {"a": 2}}, wanted=2))[0] == 2  # not a third on top


def test_before_the_engines_report_it_follows_ongoing_requests_as_serve_does() -> None:
    for policy in (EngineSignalPolicy("kv_cache", 0.5), EngineSignalPolicy("waiting_requests", 1.0)):
        desired, state = policy(ctx(1, {}, ongoing=12))
        assert desired == pytest.approx(3.0) and state["signal"] == "ongoing_requests"  # 12 / 4 per replica
        assert policy(ctx(1, None, ongoing=2))[0] == pytest.approx(0.5)
        assert policy(ctx(0, {}))[0] == 0  # Serve's cold start decides


def test_the_policy_refuses_what_it_cannot_follow() -> None:
    with pytest.raises(ValueError, match="signal"):
        EngineSignalPolicy("ongoing_requests", 1.0)
    with pytest.raises(ValueError, match="positive"):
        EngineSignalPolicy("kv_cache", 0)


def test_config_puts_the_policy_in_serves_autoscaling_config_and_serve_builds_it() -> None:
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingConfig as ServeAutoscaling

    raw = {"id": "m", "source": "s", "engine": {"max_num_seqs": 8},
           "autoscaling": {"max_replicas": 3, "signal": "kv_cache", "target_kv_cache_usage": 0.5}}  # fmt: skip
    options = deployment_options(parse_config({"models": [raw]}).models[0])["autoscaling_config"]
    assert options["policy"] == {
        "policy_function": POLICY_PATH,
        "policy_kwargs": {"signal": "kv_cache", "target": 0.5, "max_num_seqs": 8},
    }
    serve_config = ServeAutoscaling(**options)  # what Serve itself accepts, delays and bounds included
    policy = _resolve_policy_callable(serve_config.policy)
    assert isinstance(policy, EngineSignalPolicy) and policy.target == 0.5
    default = deployment_options(parse_config({"models": [{"id": "m", "source": "s"}]}).models[0])
    assert "policy" not in default["autoscaling_config"]  # Serve's own policy on ongoing requests


def test_an_embedder_cannot_scale_on_an_engine_signal() -> None:
    with pytest.raises(ConfigError, match=r"the engine.s load"):
        parse_config({"embedding_models": [{"autoscaling": {"signal": "waiting_requests"}}]})


class Stats(SimpleNamespace):
    pass


def test_the_engine_load_sees_every_scheduler_report_and_passes_it_on() -> None:
    from llm_serve.engine.engine_load import EngineLoad, watch_scheduler

    passed: list[Any] = []
    manager = SimpleNamespace(record=lambda sched, it, **kw: passed.append((sched, it, kw)))
    client = SimpleNamespace(logger_manager=manager)
    load = EngineLoad()
    assert load.metrics() == {}  # nothing reported yet: the policy falls back
    assert watch_scheduler(client, load)
    manager.record(Stats(num_running_reqs=5, num_waiting_reqs=2, kv_cache_usage=0.42), "iteration", engine_idx=0)
    manager.record(None, "iteration-only")  # an iteration without scheduler stats keeps the last report
    assert load.metrics() == {RUNNING: 5.0, WAITING: 2.0, KV_CACHE: 0.42}
    assert [p[1] for p in passed] == ["iteration", "iteration-only"]  # vLLM's own loggers still get everything
    assert not watch_scheduler(SimpleNamespace(logger_manager=None), EngineLoad())
