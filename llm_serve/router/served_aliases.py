"""Served aliases: a name clients call (`support-bot`) that points at a model, an adapter and a prompt version,
moved by `llm-serve promote` without a restart.

Every move is a row in `served_aliases` in the ledger's database (who moved it, why, the evaluation that
allowed it); the alias's target is its latest row, and a rollback writes a new row that repeats the
one before the current. Keeping the history as rows means a rollback is itself recorded, and two
router applications on one database (replicas of one app, or a second app beside it) agree on every
alias because they read the same rows: the state actor reads them on every call, and each router
replica keeps what it read for `promotion.refresh_s` (one second by default), so a move reaches every
replica within that.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from llm_serve.router.ledger import METADATA

logger = logging.getLogger("llm_serve.router")

ALIAS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NOTE_MAX_CHARS = 1000

SERVED_ALIASES = sa.Table(
    "served_aliases",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("adapter", sa.String(256)),
    sa.Column("prompt", sa.String(256)),  # name@version, pinned for requests through the alias
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("by", sa.String(128), nullable=False),  # the admin key that moved it
    sa.Column("action", sa.String(16), nullable=False),  # promote | rollback
    sa.Column("note", sa.String(NOTE_MAX_CHARS)),
    sa.Column("evaluation", sa.String(256)),  # e.g. the MLflow run id of the gating evaluation
)


@dataclass(frozen=True)
class AliasTarget:
    model: str
    adapter: str | None = None
    prompt: str | None = None  # name@version

    @property
    def model_id(self) -> str:
        """What the alias stands for in `model`: the pool, or `pool:adapter`."""
        return f"{self.model}:{self.adapter}" if self.adapter else self.model

    @property
    def prompt_name(self) -> str | None:
        return self.prompt.partition("@")[0] if self.prompt else None

    @property
    def prompt_version(self) -> str | None:
        if not self.prompt:
            return None
        return self.prompt.partition("@")[2] or None

    def describe(self) -> str:
        return self.model_id + (f" [{self.prompt}]" if self.prompt else "")


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _public(row: Any) -> dict[str, Any]:
    item = dict(row._mapping)
    item["target"] = AliasTarget(item["model"], item["adapter"], item["prompt"]).describe()
    return item


def current_aliases(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """Every alias's latest row."""
    t = SERVED_ALIASES
    latest = sa.select(t.c.alias, sa.func.max(t.c.id).label("id")).group_by(t.c.alias).subquery()
    query = sa.select(t).join(latest, t.c.id == latest.c.id).order_by(t.c.alias)
    with engine.connect() as conn:
        return {row.alias: _public(row) for row in conn.execute(query)}


def alias_history(engine: sa.Engine, alias: str, limit: int = 50) -> list[dict[str, Any]]:
    """An alias's rows, newest first."""
    t = SERVED_ALIASES
    query = sa.select(t).where(t.c.alias == alias).order_by(t.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [_public(row) for row in conn.execute(query)]


def move_alias(
    engine: sa.Engine,
    alias: str,
    target: AliasTarget,
    *,
    by: str,
    note: str | None = None,
    evaluation: str | None = None,
    expected: int | None = None,
) -> dict[str, Any] | None:
    """Write the move; None when `expected` (the row id the caller saw as current, 0 for none) is no longer
    current: another move came in between, and this one would overwrite it unseen."""
    values = {
        "alias": alias,
        "model": target.model,
        "adapter": target.adapter,
        "prompt": target.prompt,
        "ts": _now(),
        "by": by,
        "action": "promote",
        "note": (note or None) and note[:NOTE_MAX_CHARS],
        "evaluation": evaluation,
    }
    with engine.begin() as conn:
        if expected is not None:
            latest = conn.execute(
                sa.select(sa.func.max(SERVED_ALIASES.c.id)).where(SERVED_ALIASES.c.alias == alias)
            ).scalar()
            if (latest or 0) != expected:
                return None
        new_id = conn.execute(SERVED_ALIASES.insert(), values).inserted_primary_key[0]
        return _public(conn.execute(sa.select(SERVED_ALIASES).where(SERVED_ALIASES.c.id == new_id)).one())


def rollback_alias(engine: sa.Engine, alias: str, *, by: str, note: str | None = None) -> dict[str, Any] | None:
    """Point the alias back at the target it had before its current one; None when there is none."""
    t = SERVED_ALIASES
    with engine.begin() as conn:
        rows = conn.execute(sa.select(t).where(t.c.alias == alias).order_by(t.c.id.desc()).limit(2)).all()
        if len(rows) < 2:
            return None
        current, previous = rows
        values = {
            "alias": alias,
            "model": previous.model,
            "adapter": previous.adapter,
            "prompt": previous.prompt,
            "ts": _now(),
            "by": by,
            "action": "rollback",
            "note": (note or f"rollback from {AliasTarget(current.model, current.adapter, current.prompt).describe()}")[
                :NOTE_MAX_CHARS
            ],
            "evaluation": previous.evaluation,
        }
        new_id = conn.execute(t.insert(), values).inserted_primary_key[0]
        return _public(conn.execute(sa.select(t).where(t.c.id == new_id)).one())


class AliasCache:
    """A router replica's copy of the alias table, read again when older than `refresh_s`.

    One read at a time: concurrent requests that find the copy stale wait for the same read. A read
    that fails keeps the last good copy (an alias keeps working while the state actor restarts).
    """

    def __init__(self, load: Callable[[], Awaitable[dict[str, dict[str, Any]]]], refresh_s: float) -> None:
        self._load = load
        self.refresh_s = refresh_s
        self._table: dict[str, AliasTarget] = {}
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> AliasTarget | None:
        if time.monotonic() - self._read_at > self.refresh_s:
            async with self._lock:
                if time.monotonic() - self._read_at > self.refresh_s:
                    try:
                        rows = await self._load()
                        self._table = {k: AliasTarget(v["model"], v["adapter"], v["prompt"]) for k, v in rows.items()}
                    except Exception as exc:  # keep the last good copy; try again next time
                        logger.warning("served aliases not refreshed (%s: %s)", type(exc).__name__, exc)
                    self._read_at = time.monotonic()
        return self._table.get(name)

    def invalidate(self) -> None:
        self._read_at = -float("inf")
