"""One engine call for identical requests in flight at the same time.

The first caller of a key starts a flight: a task of its own that reads the engine's results into a
buffer. Every caller of the same key, the first included, reads that buffer from the start, so late
joiners get every token and a streaming follower sees the stream as it is produced. The task does
not belong to any one client, so a leader that disconnects does not cut off its followers. Flights
are per router replica; across replicas, the shared exact cache catches repeats once the first
answer is in.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any


class Flight:
    def __init__(self, start: Callable[[], AsyncIterator[Any]], timeout_s: float) -> None:
        self.items: list[Any] = []
        self.done = False
        self.error: BaseException | None = None
        self.followers = 0
        self._changed = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._drive(start, timeout_s))

    async def _drive(self, start: Callable[[], AsyncIterator[Any]], timeout_s: float) -> None:
        # Bounded like any request, so a hung engine call is not shared by every later caller.
        try:
            async with asyncio.timeout(timeout_s):
                async for item in start():
                    async with self._changed:
                        self.items.append(item)
                        self._changed.notify_all()
        except BaseException as exc:  # handed to every subscriber, not lost in the task
            self.error = exc
        finally:
            async with self._changed:
                self.done = True
                self._changed.notify_all()

    async def subscribe(self) -> AsyncIterator[Any]:
        i = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda i=i: i < len(self.items) or self.done)
                batch = self.items[i:]
                finished, error = self.done, self.error
            for item in batch:
                yield item
            i += len(batch)
            if finished and i >= len(self.items):
                if error is not None:
                    raise error
                return


class Coalescer:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._flights: dict[str, Flight] = {}
        self.calls = 0  # engine calls started (one per flight)
        self.joined = 0  # callers served by someone else's flight

    def join(self, key: str, start: Callable[[], AsyncIterator[Any]]) -> tuple[AsyncIterator[Any], bool]:
        """A stream of the engine's results for `key`, and whether it rides on an earlier caller's call."""
        flight = self._flights.get(key)
        if flight is not None and not flight.done:
            flight.followers += 1
            self.joined += 1
            return flight.subscribe(), True
        flight = Flight(start, self.timeout_s)
        self.calls += 1
        self._flights[key] = flight
        flight._task.add_done_callback(lambda _t, k=key, f=flight: self._release(k, f))
        return flight.subscribe(), False

    def _release(self, key: str, flight: Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)
