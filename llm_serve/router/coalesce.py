"""Engine calls driven by the router itself: shared by identical requests, priced even when nobody waits.

A `Flight` is one engine call read by a task of the router's into a buffer. Every subscriber reads
that buffer from the start, so a late joiner gets every token and a streaming follower sees the
stream as it is produced. The task belongs to no client, which gives two things:

- **coalescing**: identical deterministic requests in flight at once share one engine call
  (`Coalescer`); a leader that disconnects does not cut off its followers;
- **pricing what was produced**: the flight keeps the latest usage the engine reported. A streamed
  flight ends (the engine request is aborted) when its last subscriber leaves, with the usage up to
  that point; a non-streamed flight runs to its end however many subscribers are left, so that its
  answer's usage is known. The request that started it owns it and pays for all of it (the
  settle stage waits for the flight, up to `server.billing_grace_s`); followers pay the cache-hit
  price for what they receive.

Flights are per router replica; across replicas, the shared exact cache catches repeats once the
first answer is in.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_serve.sse import USAGE_MARK, event_payload


def usage_of(item: Any) -> dict[str, Any] | None:
    """The engine usage an item carries: a response object's, or the last usage event of a batch of events."""
    if isinstance(item, list):
        for event in reversed(item):
            if isinstance(event, str) and USAGE_MARK in event:
                usage = event_payload(event).get("usage")
                if isinstance(usage, dict):
                    return usage
        return None
    usage = getattr(item, "usage", None)
    if usage is None:
        return None
    return usage.model_dump(mode="json") if hasattr(usage, "model_dump") else dict(usage)


def cancel_call(results: Any) -> None:
    """Stop an engine call nobody will read (frees the engine's slot instead of generating for no one)."""
    cancel = getattr(results, "cancel", None)
    if callable(cancel):
        cancel()
        return
    close = getattr(results, "aclose", None)
    if callable(close):
        asyncio.get_running_loop().create_task(close())


class EngineCallAborted(RuntimeError):
    """A flight ended by the router (no reader left, or its pricing grace ran out) before its end."""


class Flight:
    def __init__(self, start: Callable[[], Any], timeout_s: float, *, finish_alone: bool) -> None:
        self.items: list[Any] = []
        self.done = False
        self.error: BaseException | None = None
        self.usage: dict[str, Any] | None = None
        self.subscribers = 0
        self.finish_alone = finish_alone
        self._changed = asyncio.Condition()
        # An empty context: the engine call must belong to no client's request. Ray Serve cancels the
        # calls a request made when that request is cancelled (its client left), which would end a
        # call the router still needs (to price it, or for the followers reading it).
        self._task = asyncio.get_running_loop().create_task(
            self._drive(start, timeout_s), context=contextvars.Context()
        )

    async def _drive(self, start: Callable[[], Any], timeout_s: float) -> None:
        results = start()
        # Bounded like any request, so a hung engine call is not shared by every later caller.
        try:
            async with asyncio.timeout(timeout_s):
                async for item in results:
                    usage = usage_of(item)
                    async with self._changed:
                        self.items.append(item)
                        if usage is not None:
                            self.usage = usage
                        self._changed.notify_all()
        except BaseException as exc:  # handed to every subscriber, not lost in the task
            self.error = exc
            cancel_call(results)
        finally:
            async with self._changed:
                self.done = True
                self._changed.notify_all()

    def subscribe(self) -> Subscription:
        self.subscribers += 1
        return Subscription(self)

    def _unsubscribe(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.done and not self.finish_alone:
            self._task.cancel()

    def cancel(self) -> None:
        self._task.cancel()

    async def wait(self, timeout_s: float) -> bool:
        """Whether the flight ended within `timeout_s`."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            return False
        except BaseException:  # ended by an error or a cancel: it has ended either way
            return self.done
        return True


class Subscription:
    """One reader of a flight: an async iterator of its items; `cancel()` when no longer read."""

    def __init__(self, flight: Flight) -> None:
        self.flight = flight
        self._read = 0
        self._left = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        flight = self.flight
        async with flight._changed:
            await flight._changed.wait_for(lambda: self._read < len(flight.items) or flight.done)
            if self._read < len(flight.items):
                item = flight.items[self._read]
                self._read += 1
                return item
        self.cancel()
        if isinstance(flight.error, asyncio.CancelledError):  # aborted by the router, not by this reader
            raise EngineCallAborted("the engine call was aborted")
        if flight.error is not None:
            raise flight.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        if not self._left:
            self._left = True
            self.flight._unsubscribe()


class Coalescer:
    def __init__(self, timeout_s: float, grace_s: float = 0.0) -> None:
        self.timeout_s = timeout_s
        self.grace_s = grace_s  # a non-streamed flight may outlive the request to be priced
        self._flights: dict[str, Flight] = {}
        self.calls = 0  # engine calls started (one per flight)
        self.joined = 0  # callers served by someone else's flight

    def start(self, start: Callable[[], Any], *, stream: bool) -> Flight:
        """An engine call of the router's own, for one request (not shared)."""
        return Flight(start, self.timeout_s + (0.0 if stream else self.grace_s), finish_alone=not stream)

    def join(self, key: str, start: Callable[[], AsyncIterator[Any]], *, stream: bool) -> tuple[Flight, bool]:
        """The flight for `key` (an earlier caller's when one is in the air), and whether it was joined."""
        flight = self._flights.get(key)
        if flight is not None and not flight.done:
            self.joined += 1
            return flight, True
        flight = self.start(start, stream=stream)
        self.calls += 1
        self._flights[key] = flight
        flight._task.add_done_callback(lambda _t, k=key, f=flight: self._release(k, f))
        return flight, False

    def _release(self, key: str, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)
