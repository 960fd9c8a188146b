"""Whether an engine pool can answer now: a breaker per pool, so requests fail fast while it cannot.

When an engine replica dies, Serve restarts it, and on CPU the new engine compiles the model for
minutes. Requests sent meanwhile wait in Serve's queue for a replica that does not exist yet, so a
client sees a hang, not an error. The breaker turns that into a quick 503 with `Retry-After`:

- a pool is **down** after `failures_to_open` consecutive failed calls, or at once when a call fails
  because its replica died and a health probe right after it fails too (with several replicas the
  probe reaches a live one and the pool stays up);
- while it is down, new requests for it get 503 `engine_unavailable` at once (or go to a fallback
  pool), and requests already waiting for its first output are released with the same answer;
- a probe (`check_health` on the pool, `probe_interval_s` apart, each bounded by `probe_timeout_s`)
  closes the breaker again when the pool answers, so recovery needs no restart of the stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError

logger = logging.getLogger("llm_serve.router")

# Errors that mean the replica serving the call is gone (as opposed to the request being bad).
REPLICA_GONE: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError, ReplicaUnavailableError)


class PoolDown(RuntimeError):
    """The pool's breaker is open: it cannot answer now."""

    def __init__(self, model_id: str, retry_after_s: int) -> None:
        super().__init__(f"the engine pool '{model_id}' is unavailable")
        self.model_id, self.retry_after_s = model_id, retry_after_s


class PoolBreaker:
    def __init__(
        self, model_id: str, handle: Any, *, failures_to_open: int, probe_interval_s: float, probe_timeout_s: float
    ) -> None:
        self.model_id = model_id
        self.handle = handle
        self.failures_to_open = failures_to_open
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.failures = 0
        self.opened_at: float | None = None
        self._down = asyncio.Event() if _loop_running() else None
        self._probe: asyncio.Task[None] | None = None  # the check after a replica died
        self._recovery: asyncio.Task[None] | None = None  # the checks that close an open breaker

    @property
    def is_down(self) -> bool:
        return self.opened_at is not None

    def retry_after_s(self) -> int:
        return max(1, int(self.probe_interval_s + 0.999))

    def check(self) -> None:
        """Raise PoolDown when the pool cannot answer now."""
        if self.opened_at is not None:
            raise PoolDown(self.model_id, self.retry_after_s())

    def succeeded(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            self._close()

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.opened_at is not None:
            return
        if self.failures >= self.failures_to_open:
            self._open(f"{self.failures} failed calls, the last {type(exc).__name__}")
        elif isinstance(exc, REPLICA_GONE) and (self._probe is None or self._probe.done()):
            self._probe = asyncio.get_running_loop().create_task(self._probe_after_death(exc))

    async def _probe_after_death(self, exc: BaseException) -> None:
        """A replica died: is any left? A probe that gets no answer says no, and opens the breaker."""
        try:
            await asyncio.wait_for(self.handle.check_health.remote(), self.probe_timeout_s)
        except Exception:
            if self.opened_at is None:
                self._open(f"a replica died ({type(exc).__name__}) and the pool does not answer its health check")

    async def wait_down(self) -> None:
        """Returns when the breaker opens (for a request waiting on this pool's first output)."""
        if self._down is None:
            self._down = asyncio.Event()
            if self.opened_at is not None:
                self._down.set()
        await self._down.wait()

    def _open(self, why: str) -> None:
        self.opened_at = time.monotonic()
        logger.error("engine pool %s is down (%s); requests get 503 until a health probe passes", self.model_id, why)
        if self._down is not None:
            self._down.set()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._probe_until_up())

    def _close(self) -> None:
        down_for = time.monotonic() - (self.opened_at or time.monotonic())
        self.opened_at = None
        self.failures = 0
        self._down = asyncio.Event()
        logger.warning("engine pool %s answers again after %.0f s", self.model_id, down_for)

    async def _probe_until_up(self) -> None:
        while self.opened_at is not None:
            await asyncio.sleep(self.probe_interval_s)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.handle.check_health.remote(), self.probe_timeout_s)
                self._close()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
