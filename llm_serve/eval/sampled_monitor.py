"""What the online monitors (groundedness, toxicity) share: a sample of answers, scored in background tasks.

Sampling is decided before the answer is made, so a stream keeps its text only when it is watched; the
scoring runs off the request path, with a bound on how much of it may wait, so a burst of traffic skips
samples instead of piling up work; and a window of recent verdicts gives the rate the gauges export.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Coroutine
from typing import Any, Protocol


class MonitorConfig(Protocol):
    enabled: bool
    sample_rate: float
    max_pending: int
    window: int


class SampledMonitor:
    def __init__(self, config: MonitorConfig, metrics: Any, rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.recent: collections.deque[bool] = collections.deque(maxlen=config.window)
        self.pending: set[asyncio.Task[None]] = set()
        self.skipped = 0
        self.scored = 0

    def sample(self) -> bool:
        """Whether to watch this answer."""
        return self.config.enabled and self.config.sample_rate > 0 and self.rng.random() < self.config.sample_rate

    def schedule(self, scoring: Coroutine[Any, Any, None]) -> bool:
        """Run a scoring in the background unless `max_pending` are waiting; returns whether it was scheduled."""
        if len(self.pending) >= self.config.max_pending:
            scoring.close()
            self.skipped += 1
            return False
        task = asyncio.get_running_loop().create_task(scoring)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return True

    def verdict(self, flagged: bool) -> float:
        """Count one scored answer; returns the flagged share of the recent window."""
        self.scored += 1
        self.recent.append(flagged)
        return sum(self.recent) / len(self.recent)
