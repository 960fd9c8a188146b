"""Ledger writes that never block serving and never lose a row.

The router-state actor answers every admission on one event loop; a locked or slow database on that
loop would stall every request in the cluster. So rows are written by a thread of their own:

1. `submit` appends the row to a spool file (one JSON line, flushed to the OS, so a killed actor
   loses nothing) and queues it. This is all the actor's loop ever does for a row.
2. The writer thread inserts queued rows in batches. An insert that fails (the database is down or
   locked) is retried with backoff, forever, while the rows wait in the spool and in memory.
3. Once every spooled row is in the database, the spool is emptied.
4. At start, rows a previous process spooled but did not write are queued again. Inserts skip rows
   whose `row_id` the ledger already holds, so a row is written once however often it is retried.

Spend is the database's plus the rows still on their way (`pending_spend`), so a budget counts a
request the moment it is settled, whether or not the database has caught up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from llm_serve.router.ledger import Ledger, LedgerRow

logger = logging.getLogger("llm_serve.router")

BATCH_ROWS = 256
RETRY_BASE_S = 0.05
RETRY_MAX_S = 5.0
FSYNC_EVERY_S = 1.0  # the OS survives a killed process; fsync bounds what a power loss could take


class LedgerWriter:
    def __init__(self, ledger: Ledger, spool: Path, on_error: Callable[[Exception], None] | None = None) -> None:
        self.ledger = ledger
        self.spool = spool
        self._on_error = on_error
        self._lock = threading.Condition()
        self._queue: list[LedgerRow] = []  # submitted, not yet in the database (oldest first)
        self._writing: list[LedgerRow] = []  # the batch being inserted now
        self._closed = False
        self.failures = 0  # failed insert attempts so far (a health signal)
        self.written = 0
        spool.parent.mkdir(parents=True, exist_ok=True)
        self._queue.extend(self._read_spool())
        if self._queue:
            logger.warning("ledger: %d spooled row(s) from an earlier process are written again", len(self._queue))
        self._file = open(spool, "a", encoding="utf-8")  # noqa: SIM115  (lives as long as the writer)
        self._synced = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def _read_spool(self) -> list[LedgerRow]:
        if not self.spool.exists():
            return []
        rows = []
        for number, line in enumerate(self.spool.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rows.append(LedgerRow(**json.loads(line)))
            except (ValueError, TypeError) as exc:  # a line cut by a crash mid-write: the rest still counts
                logger.error("ledger spool %s:%d unreadable (%s); skipped", self.spool, number, exc)
        return rows

    # ---- the actor's side -----------------------------------------------------------------------

    def submit(self, row: LedgerRow) -> None:
        """Spool and queue one row; returns at once (no database work on the caller's thread)."""
        line = json.dumps(asdict(row), separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if time.monotonic() - self._synced > FSYNC_EVERY_S:
                os.fsync(self._file.fileno())
                self._synced = time.monotonic()
            self._queue.append(row)
            self._lock.notify_all()

    def pending(self) -> list[LedgerRow]:
        with self._lock:
            return [*self._writing, *self._queue]

    def pending_spend(self, key_name: str, since: float) -> float:
        return sum(r.cost_usd for r in self.pending() if r.key_name == key_name and r.ts >= since)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every submitted row is in the database (reads that must see them call this)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._queue or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        self.drain(timeout_s)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout_s)
        self._file.close()

    # ---- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_BASE_S
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if self._closed and not self._queue:
                    return
                self._writing, self._queue = self._queue[:BATCH_ROWS], self._queue[BATCH_ROWS:]
                batch = list(self._writing)
            try:
                self.ledger.insert_many(batch)
            except Exception as exc:  # the database is down or locked: keep the rows, try again later
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    logger.error(
                        "ledger write failed (%s: %s); %d row(s) wait in %s",
                        type(exc).__name__,
                        exc,
                        len(self.pending()),
                        self.spool,
                    )
                if self._on_error is not None:
                    self._on_error(exc)
                with self._lock:
                    self._queue[:0] = self._writing  # back to the front, in order
                    self._writing = []
                    self._lock.wait(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            delay = RETRY_BASE_S
            with self._lock:
                self.written += len(batch)
                self._writing = []
                if not self._queue:
                    self._file.truncate(0)  # everything spooled is in the database
                    self._file.seek(0)
                self._lock.notify_all()
