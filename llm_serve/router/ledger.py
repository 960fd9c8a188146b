"""The request ledger: one row per request, in SQLite by default or any database SQLAlchemy speaks.

It is the source of truth for spend: budgets are summed from it at start-up, so a restart neither
forgets nor double-counts what a key has spent. Rows are written by the router-state actor only,
which keeps SQLite to a single writer.

The schema is declared once, as `LedgerRow`: each field's SQL column (type, index) rides in its
metadata and the table is built from the fields, so the row the router fills in, the row the state
actor writes and the table cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

logger = logging.getLogger("llm_serve.router")

Period = Literal["day", "month", "total"]
ERROR_MAX_CHARS = 512


def _column(sql_type: Any, *, index: bool = False, unique: bool = False) -> dict[str, Any]:
    return {"sql": sql_type, "index": index, "unique": unique}


def _row_id() -> str:
    return uuid.uuid4().hex


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


@dataclass
class LedgerRow:
    """What one request cost and how it ended. `ts` is when it was settled (the ledger's time axis)."""

    request_id: str = field(metadata=_column(sa.String(64)))
    key_name: str = field(metadata=_column(sa.String(128), index=True))
    route: str = field(metadata=_column(sa.String(32)))
    model: str = field(metadata=_column(sa.String(256)))
    stream: bool = field(default=False, metadata=_column(sa.Boolean))
    status: int = field(default=200, metadata=_column(sa.Integer))
    latency_ms: float = field(default=0.0, metadata=_column(sa.Float))
    ts: float = field(default_factory=_now, metadata=_column(sa.Float, index=True))
    adapter: str | None = field(default=None, metadata=_column(sa.String(256)))
    prompt: str | None = field(default=None, metadata=_column(sa.String(256)))
    prompt_tokens: int = field(default=0, metadata=_column(sa.Integer))
    cached_tokens: int = field(default=0, metadata=_column(sa.Integer))
    completion_tokens: int = field(default=0, metadata=_column(sa.Integer))
    cost_usd: float = field(default=0.0, metadata=_column(sa.Float))
    cache: str = field(default="none", metadata=_column(sa.String(16)))
    error: str | None = field(default=None, metadata=_column(sa.String(ERROR_MAX_CHARS)))
    # The API shape the client spoke (`openai`, `responses`, `anthropic`, `batch`); `route` is what ran.
    api: str = field(default="openai", metadata=_column(sa.String(16)))
    # What guardrails found and did (`input:pii=redact,output:toxicity=flag`); None when nothing fired.
    guardrail: str | None = field(default=None, metadata=_column(sa.String(128)))
    # The served alias the client called (`support-bot`), when it called one; `model`/`adapter` are its target.
    served_alias: str | None = field(default=None, metadata=_column(sa.String(64)))
    # The row's own identity: a row retried after a crash or a timeout is written once (request ids are
    # the client's and may repeat).
    row_id: str = field(default_factory=_row_id, metadata=_column(sa.String(32), unique=True))

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if row["error"] is not None:
            row["error"] = row["error"][:ERROR_MAX_CHARS]
        return row


def _table(metadata: sa.MetaData) -> sa.Table:
    """The `requests` table: an autoincrement id (the order rows were written in), then LedgerRow's fields."""
    columns = [sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)]
    for f in fields(LedgerRow):
        # Optional fields (default None) are nullable; the rest always hold a value.
        nullable = f.default is None and f.default_factory is MISSING
        index, unique = f.metadata["index"], f.metadata["unique"]
        columns.append(sa.Column(f.name, f.metadata["sql"], nullable=nullable, index=index or unique, unique=unique))
    return sa.Table("requests", metadata, *columns)


METADATA = sa.MetaData()
REQUESTS = _table(METADATA)


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
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a ledger written by an older llm-serve lacks (create_all never alters a table)."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns("requests")}
        missing = [c for c in REQUESTS.columns if c.name not in present]
        with self.engine.begin() as conn:
            for column in missing:
                sql_type = column.type.compile(dialect=self.engine.dialect)
                conn.execute(sa.text(f"ALTER TABLE requests ADD COLUMN {column.name} {sql_type}"))
                logger.info("ledger: added column %s to the requests table", column.name)
            for index in REQUESTS.indexes:
                if any(c.name in {m.name for m in missing} for c in index.columns):
                    index.create(conn, checkfirst=True)

    def record(self, row: LedgerRow) -> None:
        self.insert_many([row])

    def insert_many(self, rows: list[LedgerRow]) -> int:
        """Insert the rows not in the ledger yet (by row_id), in one transaction; returns how many were new."""
        if not rows:
            return 0
        unique = list({r.row_id: r for r in rows}.values())
        with self.engine.begin() as conn:
            ids = [r.row_id for r in unique]
            present = set(conn.execute(sa.select(REQUESTS.c.row_id).where(REQUESTS.c.row_id.in_(ids))).scalars())
            new = [r.as_dict() for r in unique if r.row_id not in present]
            if new:
                conn.execute(REQUESTS.insert(), new)
        return len(new)

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

    def rows(
        self, limit: int = 100, key_name: str | None = None, request_id: str | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(REQUESTS).order_by(REQUESTS.c.id.desc()).limit(limit)
        if key_name is not None:
            query = query.where(REQUESTS.c.key_name == key_name)
        if request_id is not None:
            query = query.where(REQUESTS.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def close(self) -> None:
        self.engine.dispose()
