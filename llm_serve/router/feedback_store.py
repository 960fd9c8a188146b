"""User feedback in the ledger database: one row per answered request, tied to its ledger row and key.

A feedback row copies the request's model, adapter and prompt version from its ledger row when it is
first written, so the business metrics (satisfaction, task completion, escalation) group by what
served the request without a join, and a ledger row pruned later leaves its feedback readable. A
second submission for the same request merges into the first (a thumbs-up now, "escalated" an hour
later): the latest value of each field wins, fields left out are kept.

The table lives beside `requests` in the ledger's database (same MetaData, same migrations), and is
written only by the router-state actor, like the ledger.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from llm_serve.router.ledger import METADATA, REQUESTS

COMMENT_MAX_CHARS = 2000
SIGNALS = ("rating", "score", "task_completed", "escalated", "comment")

FEEDBACK = sa.Table(
    "feedback",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("row_id", sa.String(32), nullable=False, unique=True, index=True),  # the ledger row's
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("key_name", sa.String(128), nullable=False, index=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("adapter", sa.String(256)),
    sa.Column("prompt", sa.String(256)),
    sa.Column("ts", sa.Float, nullable=False, index=True),  # first submission
    sa.Column("updated_ts", sa.Float, nullable=False),
    sa.Column("rating", sa.Integer),  # +1 thumbs up, -1 thumbs down
    sa.Column("score", sa.Integer),  # 1..5
    sa.Column("task_completed", sa.Boolean),
    sa.Column("escalated", sa.Boolean),
    sa.Column("comment", sa.String(COMMENT_MAX_CHARS)),
)


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def record_feedback(engine: sa.Engine, key_name: str, request_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Merge `fields` into the feedback of the key's latest request with this id; None when there is none.

    The request must be the key's own: another tenant's request id finds nothing, exactly as an unknown
    one does, so ids cannot be probed across tenants. Two first submissions at once (a double click)
    race to insert: the loser's unique-key error is retried as the merge it should have been.
    """
    for attempt in range(2):
        try:
            return _merge(engine, key_name, request_id, fields)
        except sa.exc.IntegrityError:
            if attempt:
                raise
    return None


def _merge(engine: sa.Engine, key_name: str, request_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    given = {k: v for k, v in fields.items() if k in SIGNALS and v is not None}
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(REQUESTS.c.row_id, REQUESTS.c.model, REQUESTS.c.adapter, REQUESTS.c.prompt)
            .where(REQUESTS.c.key_name == key_name, REQUESTS.c.request_id == request_id)
            .order_by(REQUESTS.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        now = _now()
        existing = conn.execute(sa.select(FEEDBACK.c.id).where(FEEDBACK.c.row_id == row.row_id)).first()
        if existing is None:
            values = {
                "row_id": row.row_id,
                "request_id": request_id,
                "key_name": key_name,
                "model": row.model,
                "adapter": row.adapter,
                "prompt": row.prompt,
                "ts": now,
                "updated_ts": now,
                **given,
            }
            conn.execute(FEEDBACK.insert(), values)
        else:
            conn.execute(FEEDBACK.update().where(FEEDBACK.c.row_id == row.row_id).values(updated_ts=now, **given))
        merged = conn.execute(sa.select(FEEDBACK).where(FEEDBACK.c.row_id == row.row_id)).one()
        return dict(merged._mapping)


def _rate(condition: Any, present: Any) -> Any:
    """The share of rows where `condition` holds among those where the field was given (NULL when none were)."""
    hits = sa.func.sum(sa.case((condition, 1), else_=0))
    given = sa.func.sum(sa.case((present, 1), else_=0))
    return sa.case((given > 0, sa.cast(hits, sa.Float) / given), else_=None), given


def feedback_summary(engine: sa.Engine, since: float, key_name: str | None = None) -> list[dict[str, Any]]:
    """Per model, adapter and prompt version: how many requests got feedback, and the business rates.

    satisfaction: thumbs up among thumbs given; task_completion_rate and escalation_rate: among the
    requests that said; mean_score: over 1-5 scores given.
    """
    c = FEEDBACK.c
    satisfaction, rated = _rate(c.rating > 0, c.rating.is_not(None))
    completion, told_completion = _rate(c.task_completed.is_(True), c.task_completed.is_not(None))
    escalation, told_escalation = _rate(c.escalated.is_(True), c.escalated.is_not(None))
    query = (
        sa.select(
            c.model,
            c.adapter,
            c.prompt,
            sa.func.count().label("feedback"),
            rated.label("rated"),
            sa.func.sum(sa.case((c.rating > 0, 1), else_=0)).label("thumbs_up"),
            sa.func.sum(sa.case((c.rating < 0, 1), else_=0)).label("thumbs_down"),
            satisfaction.label("satisfaction"),
            sa.func.avg(c.score).label("mean_score"),
            sa.func.count(c.score).label("scored"),
            completion.label("task_completion_rate"),
            told_completion.label("task_reported"),
            escalation.label("escalation_rate"),
            told_escalation.label("escalation_reported"),
        )
        .where(c.ts >= since)
        .group_by(c.model, c.adapter, c.prompt)
        .order_by(c.model, c.adapter, c.prompt)
    )
    if key_name is not None:
        query = query.where(c.key_name == key_name)
    with engine.connect() as conn:
        out = []
        for row in conn.execute(query):
            item = row._asdict()
            for name in ("satisfaction", "mean_score", "task_completion_rate", "escalation_rate"):
                if item[name] is not None:
                    item[name] = round(float(item[name]), 6)
            for name in ("rated", "thumbs_up", "thumbs_down", "scored", "task_reported", "escalation_reported"):
                item[name] = int(item[name] or 0)
            out.append(item)
        return out
