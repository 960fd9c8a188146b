"""SQLAlchemy engines for the router's own tables (stored responses, batches and their files).

These live in the ledger's database by default, written by every router replica at once; SQLite
handles that when each connection waits for the others' writes (a busy timeout) and readers do not
block the writer (WAL). Other databases get a pooled engine that checks its connections.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def sqlite_engine(url: str) -> sa.Engine:
    """An engine whose SQLite connections wait for each other's writes instead of failing at once."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, future=True, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, future=True, pool_pre_ping=True)


class LazyEngine:
    """An engine opened, with its tables created, on first use: a router that never serves the routes a
    store is for never touches its database. Store calls run in threads, so the first use is locked and
    the engine is handed out only once its tables exist."""

    def __init__(self, url: str, metadata: sa.MetaData) -> None:
        self.url = url
        self.metadata = metadata
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    def get(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                engine = sqlite_engine(self.url)
                self.metadata.create_all(engine)
                self._engine = engine
        return self._engine
