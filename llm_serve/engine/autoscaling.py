"""Which signal an engine pool's replica count follows: Serve's ongoing requests, or the engine's own load.

Serve's default policy scales a deployment so that each replica holds `target_ongoing_requests`. For an LLM
engine that count says little about how busy the replica is: a replica with 8 short requests can be idle
half the time, and one with 8 long prompts can have a full KV cache and a queue. vLLM's scheduler knows; the
engine replicas report what it said last (engine_load.py), and `EngineSignalPolicy` scales on it:

- `kv_cache`: the replicas' mean KV-cache use is held near `target_kv_cache_usage`, in proportion, as Serve
  does with ongoing requests (two replicas at 0.9 against a target of 0.6 ask for three).
- `waiting_requests`: requests that wait in the engines' queues are the overload signal (as a queue-length
  scaler in KEDA). A replica is added while more than `target_waiting_requests` per replica wait; one is
  removed when nothing waits and what runs fits in one replica fewer at half their `max_num_seqs`, so that
  the scale-down does not start a queue again at once.

Serve applies `min_replicas`, `max_replicas` and the upscale and downscale delays around any custom policy,
as it does around its own. Until the engines have reported (a replica starting, an engine that keeps no
stats), the policy follows ongoing requests, exactly like Serve's default.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger("ray.serve")  # the controller's log, beside Serve's own scaling decisions

POLICY_PATH = "llm_serve.engine.autoscaling:EngineSignalPolicy"
SIGNALS = ("ongoing_requests", "kv_cache", "waiting_requests")
# The metric names an engine replica reports (engine_load.py); Serve aggregates each per replica over its
# look-back period. Kept here, not there, so that the Serve controller, which imports this module to run the
# policy, does not import vLLM.
RUNNING = "engine_running_requests"
WAITING = "engine_waiting_requests"
KV_CACHE = "engine_kv_cache_usage"
# The share of `max_num_seqs` the remaining replicas may run after a scale-down on the queue signal.
DOWNSCALE_FILL = 0.5


def _mean(values: dict[Any, float]) -> float:
    return sum(values.values()) / len(values)


class EngineSignalPolicy:
    """A Serve autoscaling policy (a class, so Serve builds it once with `policy_kwargs`)."""

    def __init__(self, signal: str, target: float, max_num_seqs: int = 64) -> None:
        if signal not in SIGNALS[1:]:
            raise ValueError(f"signal must be one of {SIGNALS[1:]}, not {signal!r}")
        if target <= 0:
            raise ValueError("target must be positive")
        self.signal = signal
        self.target = target
        self.max_num_seqs = max_num_seqs
        self._said: tuple[str, int] | None = None

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        desired, state = self._decide(ctx)
        self._say(ctx, desired, state)
        return desired, state

    def _say(self, ctx: Any, desired: float, state: dict[str, Any]) -> None:
        """Log what the signal read when the replica count it asks for changes (once per change: the policy
        runs every control-loop tick, and Serve's delays hold a decision for many ticks)."""
        said = (state.get("signal", ""), math.ceil(desired))
        if said != self._said:
            self._said = said
            logger.info(
                "engine signal %s = %s over %d running replicas (target %g): %d replicas wanted",
                said[0], state.get("value", ctx.total_num_requests), ctx.current_num_replicas, self.target, said[1],
            )  # fmt: skip

    def _decide(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        replicas = ctx.current_num_replicas
        if replicas == 0:  # Serve's cold start path decides; nothing has reported yet
            return ctx.target_num_replicas, {}
        metrics = ctx.aggregated_metrics or {}
        if self.signal == "kv_cache":
            usage = metrics.get(KV_CACHE)
            if usage:
                return replicas * _mean(usage) / self.target, {"signal": "kv_cache", "value": round(_mean(usage), 4)}
        else:
            waiting = metrics.get(WAITING)
            if waiting:
                running = sum((metrics.get(RUNNING) or {}).values())
                return self._on_queue(replicas, ctx.target_num_replicas, sum(waiting.values()), running)
        return ctx.total_num_requests / ctx.config.get_target_ongoing_requests(), {"signal": "ongoing_requests"}

    def _on_queue(self, replicas: int, wanted: int, waiting: float, running: float) -> tuple[float, dict[str, Any]]:
        """A step up or down from the count already asked for (`wanted`, which counts replicas still starting),
        judged by what the running `replicas` report. Holding returns `wanted`, not the running count: the
        latter would cancel a replica that is starting because the queue, meanwhile, sits at its target."""
        state = {"signal": "waiting_requests", "value": round(waiting, 2)}
        if waiting > self.target * replicas:
            return max(wanted, replicas + 1), state
        if waiting < 0.5 and wanted > 1 and running <= (wanted - 1) * self.max_num_seqs * DOWNSCALE_FILL:
            return wanted - 1, state
        return wanted, state


def policy_options(signal: str, target: float, max_num_seqs: int) -> dict[str, Any] | None:
    """Serve's `autoscaling_config.policy` for a signal; None for Serve's own (ongoing requests)."""
    if signal == "ongoing_requests":
        return None
    EngineSignalPolicy(signal, target, max_num_seqs)  # the same checks the controller will make
    return {
        "policy_function": POLICY_PATH,
        "policy_kwargs": {"signal": signal, "target": target, "max_num_seqs": max_num_seqs},
    }
