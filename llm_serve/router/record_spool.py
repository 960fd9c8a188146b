"""Ledger rows the router could not hand to the router-state actor, kept until it takes them.

Settlement sends each request's row to the state actor. When that call fails or times out (the
actor is restarting, or overloaded), the row is not dropped: it goes to a spool file of this router
replica's (one JSON line, flushed) and a background task offers it again with backoff until the
actor takes it. The actor takes a row once by its `row_id` (state.py), so a row whose first send
did arrive after all is not billed twice. A new router replica adopts the spools of replicas that
died (their pid is gone) and resends them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from llm_serve.router.ledger import LedgerRow

logger = logging.getLogger("llm_serve.router")

RETRY_BASE_S = 0.5
RETRY_MAX_S = 30.0

Send = Callable[[LedgerRow, str | None], Awaitable[None]]
SPOOL_PREFIX = "router-"


def spool_file(directory: Path, app_name: str) -> Path:
    """This process's spool: named by its application (whose state takes the rows) and its pid, so a dead
    replica's spool can be told from a live one's."""
    return directory / f"{SPOOL_PREFIX}{app_name}-{os.getpid()}.jsonl"


def _alive(path: Path) -> bool:
    try:
        pid = int(path.stem.rsplit("-", 1)[1])
        os.kill(pid, 0)
    except (ValueError, IndexError):
        return False
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RecordSpool:
    def __init__(self, path: Path, send: Send) -> None:
        self.path = path
        self._send = send
        self._rows: list[tuple[LedgerRow, str | None]] = self._load()
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> list[tuple[LedgerRow, str | None]]:
        """This replica's spool, and those of replicas that died with rows still in theirs."""
        rows = []
        app = self.path.stem.rsplit("-", 1)[0]
        for path in sorted(self.path.parent.glob(f"{app}-*.jsonl")):
            if path.stem.rsplit("-", 1)[0] != app or (path != self.path and _alive(path)):
                continue
            with contextlib.suppress(OSError):
                for line in path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        data = json.loads(line)
                        rows.append((LedgerRow(**data["row"]), data.get("reservation")))
                if path != self.path:
                    path.unlink()
        if rows:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps({"row": asdict(r), "reservation": x}) + "\n" for r, x in rows))
        return rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: LedgerRow, reservation: str | None) -> None:
        """Keep a row the actor did not take, and make sure someone offers it again."""
        self._rows.append((row, reservation))
        self._save()
        self.start()

    def start(self) -> None:
        if self._rows and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._resend())

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"row": asdict(r), "reservation": x}) + "\n" for r, x in self._rows))
        os.replace(tmp, self.path)

    async def _resend(self) -> None:
        delay = RETRY_BASE_S
        while self._rows:
            row, reservation = self._rows[0]
            try:
                await self._send(row, reservation)
            except Exception as exc:
                logger.warning("ledger row %s still not taken (%s); %d waiting", row.row_id, exc, len(self._rows))
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            delay = RETRY_BASE_S
            self._rows.pop(0)
            self._save()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
