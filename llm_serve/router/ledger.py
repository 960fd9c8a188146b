"""The request ledger: one row per request, in SQLite by default or any database SQLAlchemy speaks.

It is the source of truth for spend: budgets are summed from it at start-up, so a restart neither
forgets nor double-counts what a key has spent. Rows are written by the router-state actor only,
which keeps SQLite to a single writer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

Period = Literal["day", "month", "total"]

METADATA = sa.MetaData()
REQUESTS = sa.Table(
    "requests",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("key_name", sa.String(128), nullable=False, index=True),
    sa.Column("route", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("adapter", sa.String(256)),
    sa.Column("prompt", sa.String(256)),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("cached_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("cache", sa.String(16), nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error", sa.String(512)),
)


@dataclass
class LedgerRow:
    request_id: str
    key_name: str
    route: str
    model: str
    stream: bool
    status: int
    latency_ms: float
    ts: float = field(default_factory=lambda: dt.datetime.now(dt.UTC).timestamp())
    adapter: str | None = None
    prompt: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache: str = "none"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if row["error"] is not None:
            row["error"] = row["error"][:512]
        return row


def period_start(period: Period, now: dt.datetime | None = None) -> float:
    """Start of the current calendar period (UTC) as a timestamp; 0 for 'total'."""
    now = now or dt.datetime.now(dt.UTC)
    if period == "total":
        return 0.0
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
    return start.timestamp()


def default_url(home: Path) -> str:
    return f"sqlite:///{home / 'ledger.sqlite'}"


class Ledger:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            # WAL lets /admin/usage read while rows are written; NORMAL sync is durable at checkpoints.
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(conn: Any, _record: Any) -> None:
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        METADATA.create_all(self.engine)

    def record(self, row: LedgerRow) -> None:
        with self.engine.begin() as conn:
            conn.execute(REQUESTS.insert().values(**row.as_dict()))

    def spend(self, key_name: str, since: float) -> float:
        query = sa.select(sa.func.coalesce(sa.func.sum(REQUESTS.c.cost_usd), 0.0)).where(
            REQUESTS.c.key_name == key_name, REQUESTS.c.ts >= since
        )
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def usage(self, since: float, until: float | None = None, key_name: str | None = None) -> list[dict[str, Any]]:
        """Totals per key and model between two timestamps, cache hits counted apart."""
        c = REQUESTS.c
        query = (
            sa.select(
                c.key_name,
                c.model,
                sa.func.count().label("requests"),
                sa.func.sum(sa.case((c.status >= 400, 1), else_=0)).label("errors"),
                sa.func.sum(sa.case((c.cache.in_(("hit", "semantic_hit", "coalesced")), 1), else_=0)).label(
                    "cache_hits"
                ),
                sa.func.sum(c.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(c.completion_tokens).label("completion_tokens"),
                sa.func.sum(c.cost_usd).label("cost_usd"),
            )
            .where(c.ts >= since)
            .group_by(c.key_name, c.model)
            .order_by(c.key_name, c.model)
        )
        if until is not None:
            query = query.where(c.ts < until)
        if key_name is not None:
            query = query.where(c.key_name == key_name)
        with self.engine.connect() as conn:
            return [{**row._asdict(), "cost_usd": round(float(row.cost_usd or 0.0), 9)} for row in conn.execute(query)]

    def rows(self, limit: int = 100, key_name: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(REQUESTS).order_by(REQUESTS.c.id.desc()).limit(limit)
        if key_name is not None:
            query = query.where(REQUESTS.c.key_name == key_name)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def close(self) -> None:
        self.engine.dispose()
