"""A bounded, expiring map of request hash -> finished response (LRU eviction).

Bounded by entries and by bytes: `max_entries` alone would let ten thousand long answers take
gigabytes of the state actor's memory. The size of an answer is its JSON length, measured once by
the router that stores it; an answer over `max_entry_bytes` is not stored at all.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class ExactCache:
    def __init__(self, max_entries: int, ttl_s: float, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            if entry is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: Any, size: int = 0, ttl_s: float | None = None) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + (ttl_s or self.ttl_s), value, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {
            "entries": len(self),
            "bytes": self.bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
