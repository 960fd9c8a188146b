"""Files, batches and each batch's lines, in a database every router replica reaches.

A batch is worked on by one router replica at a time: the one holding its lease (`lease_owner`,
`lease_until`), taken with a conditional UPDATE so two replicas never both win, renewed while the
runner works, and free for another replica once it lapses (its holder restarted or died). Each
input line is a row with its own state, so a batch resumes at its first unanswered line and no
answered line is sent twice. Files and batches belong to the key that made them: another key's id
reads as absent (404), as at OpenAI. Calls run in a thread: the database client blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from llm_serve.router.sql_engine import LazyEngine

METADATA = sa.MetaData()
FILES = sa.Table(
    "batch_files",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_name", sa.String(128), nullable=False, index=True),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("filename", sa.String(256), nullable=False),
    sa.Column("bytes", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
)
BATCHES = sa.Table(
    "batches",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_name", sa.String(128), nullable=False, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Integer, nullable=False),
    sa.Column("times", sa.Text, nullable=False),  # JSON: in_progress_at, finalizing_at, completed_at, ...
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("completed", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("output_file_id", sa.String(64)),
    sa.Column("error_file_id", sa.String(64)),
    sa.Column("errors", sa.Text),  # JSON: validation errors of the input file
    sa.Column("meta", sa.Text),  # JSON: the client's metadata
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float, nullable=False, default=0.0),
)
LINES = sa.Table(
    "batch_lines",
    METADATA,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("custom_id", sa.String(512), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, done, failed
    sa.Column("result", sa.Text),  # JSON: the output or error file's line
)

# Statuses a runner still has work in (a lease decides who does it).
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}" if prefix == "file" else f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class Line:
    line: int
    custom_id: str
    body: dict[str, Any]


def batch_object(row: Any) -> dict[str, Any]:
    """A batch row as OpenAI's Batch object (with llm-serve's `cost_usd` of the lines answered so far)."""
    times = json.loads(row.times)
    obj = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": json.loads(row.errors) if row.errors else None,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": json.loads(row.meta) if row.meta else None,
        "cost_usd": round(row.cost_usd, 10),
    }
    for name in (
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
    ):
        obj[name] = times.get(name)
    return obj


def file_object(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }


class BatchStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._tables = LazyEngine(url, METADATA)

    @property
    def engine(self) -> sa.Engine:
        return self._tables.get()

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # ---- files ----------------------------------------------------------------------------------

    def put_file(self, key_name: str, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        row = {
            "id": new_id("file"),
            "key_name": key_name,
            "purpose": purpose,
            "filename": filename[:256],
            "bytes": len(content),
            "created_at": int(time.time()),
            "content": content,
        }
        with self.engine.begin() as conn:
            conn.execute(FILES.insert().values(**row))
        return file_object(SimpleNamespace(**row))

    def get_file(self, key_name: str, file_id: str) -> Any:
        query = sa.select(*[c for c in FILES.c if c.name != "content"]).where(
            FILES.c.id == file_id, FILES.c.key_name == key_name
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    def file_content(self, key_name: str, file_id: str) -> bytes | None:
        query = sa.select(FILES.c.content).where(FILES.c.id == file_id, FILES.c.key_name == key_name)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else bytes(row.content)

    def list_files(self, key_name: str, purpose: str | None, limit: int, after: str | None) -> list[Any]:
        query = sa.select(*[c for c in FILES.c if c.name != "content"]).where(FILES.c.key_name == key_name)
        if purpose is not None:
            query = query.where(FILES.c.purpose == purpose)
        if after is not None:
            query = query.where(_after(FILES, after))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(FILES.c.created_at.desc(), FILES.c.id).limit(limit)))

    def delete_file(self, key_name: str, file_id: str) -> bool:
        query = FILES.delete().where(FILES.c.id == file_id, FILES.c.key_name == key_name)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount > 0

    # ---- batches --------------------------------------------------------------------------------

    def create_batch(
        self, key_name: str, endpoint: str, input_file_id: str, window: str, window_s: float, meta: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        row = {
            "id": new_id("batch"),
            "key_name": key_name,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": window,
            "status": "validating",
            "created_at": now,
            "expires_at": now + int(window_s),
            "times": "{}",
            "total": 0,
            "completed": 0,
            "failed": 0,
            "meta": json.dumps(meta) if meta is not None else None,
            "cost_usd": 0.0,
            "lease_until": 0.0,
        }
        with self.engine.begin() as conn:
            conn.execute(BATCHES.insert().values(**row))
            return batch_object(conn.execute(sa.select(BATCHES).where(BATCHES.c.id == row["id"])).one())

    def get_batch(self, key_name: str | None, batch_id: str) -> Any:
        query = sa.select(BATCHES).where(BATCHES.c.id == batch_id)
        if key_name is not None:
            query = query.where(BATCHES.c.key_name == key_name)
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    def list_batches(self, key_name: str, limit: int, after: str | None) -> list[Any]:
        query = sa.select(BATCHES).where(BATCHES.c.key_name == key_name)
        if after is not None:
            query = query.where(_after(BATCHES, after))
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(BATCHES.c.created_at.desc(), BATCHES.c.id).limit(limit)))

    def request_cancel(self, key_name: str, batch_id: str) -> Any:
        """Move a batch that still has work to `cancelling` (its runner finishes the lines in flight)."""
        now = int(time.time())
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(BATCHES).where(BATCHES.c.id == batch_id, BATCHES.c.key_name == key_name)
            ).first()
            if row is None or row.status not in ("validating", "in_progress", "finalizing"):
                return row
            times = {**json.loads(row.times), "cancelling_at": now}
            conn.execute(
                BATCHES.update().where(BATCHES.c.id == batch_id).values(status="cancelling", times=json.dumps(times))
            )
            return conn.execute(sa.select(BATCHES).where(BATCHES.c.id == batch_id)).first()

    # ---- the runner's side ----------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float) -> Any:
        """The oldest active batch whose lease has lapsed, now leased to `owner`; None when there is none."""
        now = time.time()
        with self.engine.begin() as conn:
            candidates = conn.execute(
                sa.select(BATCHES.c.id)
                .where(BATCHES.c.status.in_(ACTIVE), BATCHES.c.lease_until < now)
                .order_by(BATCHES.c.created_at)
                .limit(5)
            ).all()
            for (batch_id,) in candidates:
                won = conn.execute(
                    BATCHES.update()
                    .where(BATCHES.c.id == batch_id, BATCHES.c.lease_until < now)
                    .values(lease_owner=owner, lease_until=now + lease_s)
                ).rowcount
                if won:
                    return conn.execute(sa.select(BATCHES).where(BATCHES.c.id == batch_id)).one()
        return None

    def renew(self, batch_id: str, owner: str, lease_s: float) -> Any:
        """Extend the lease; the batch's current row, or None when `owner` no longer holds it."""
        with self.engine.begin() as conn:
            held = conn.execute(
                BATCHES.update()
                .where(BATCHES.c.id == batch_id, BATCHES.c.lease_owner == owner)
                .values(lease_until=time.time() + lease_s)
            ).rowcount
            return conn.execute(sa.select(BATCHES).where(BATCHES.c.id == batch_id)).one() if held else None

    def release(self, batch_id: str, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                BATCHES.update()
                .where(BATCHES.c.id == batch_id, BATCHES.c.lease_owner == owner)
                .values(lease_owner=None, lease_until=0.0)
            )

    def set_status(self, batch_id: str, status: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(BATCHES.c.times).where(BATCHES.c.id == batch_id)).one()
            times = {**json.loads(row.times), f"{status}_at": int(time.time())}
            conn.execute(
                BATCHES.update()
                .where(BATCHES.c.id == batch_id)
                .values(status=status, times=json.dumps(times), **values)
            )

    def add_lines(self, batch_id: str, lines: list[Line]) -> None:
        """The validated input, one row per line, and the batch `in_progress` (one transaction)."""
        with self.engine.begin() as conn:
            conn.execute(LINES.delete().where(LINES.c.batch_id == batch_id))  # a validation cut short earlier
            for start in range(0, len(lines), 500):
                conn.execute(
                    LINES.insert(),
                    [
                        {
                            "batch_id": batch_id,
                            "line": ln.line,
                            "custom_id": ln.custom_id,
                            "body": json.dumps(ln.body),
                            "state": "pending",
                        }
                        for ln in lines[start : start + 500]
                    ],
                )
            row = conn.execute(sa.select(BATCHES.c.times).where(BATCHES.c.id == batch_id)).one()
            times = {**json.loads(row.times), "in_progress_at": int(time.time())}
            conn.execute(
                BATCHES.update()
                .where(BATCHES.c.id == batch_id, BATCHES.c.status == "validating")
                .values(status="in_progress", total=len(lines), times=json.dumps(times))
            )

    def pending(self, batch_id: str, limit: int, exclude: set[int]) -> list[Line]:
        query = (
            sa.select(LINES.c.line, LINES.c.custom_id, LINES.c.body)
            .where(LINES.c.batch_id == batch_id, LINES.c.state == "pending")
            .order_by(LINES.c.line)
            .limit(limit + len(exclude))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Line(r.line, r.custom_id, json.loads(r.body)) for r in rows if r.line not in exclude][:limit]

    def finish_line(self, batch_id: str, line: int, ok: bool, result: dict[str, Any], cost_usd: float) -> None:
        """A line's answer and the batch's counts, together: a restart sees both or neither."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                LINES.update()
                .where(LINES.c.batch_id == batch_id, LINES.c.line == line, LINES.c.state == "pending")
                .values(state="done" if ok else "failed", result=json.dumps(result))
            ).rowcount
            if not changed:
                return
            counter = BATCHES.c.completed if ok else BATCHES.c.failed
            conn.execute(
                BATCHES.update()
                .where(BATCHES.c.id == batch_id)
                .values({counter.name: counter + 1, "cost_usd": BATCHES.c.cost_usd + cost_usd})
            )

    def fail_pending(self, batch_id: str, code: str, message: str) -> int:
        """Every line not yet answered fails with `code` (a batch that expired or was cancelled)."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(LINES.c.line, LINES.c.custom_id).where(
                    LINES.c.batch_id == batch_id, LINES.c.state == "pending"
                )
            ).all()
            for r in rows:
                result = {
                    "id": f"batch_req_{uuid.uuid4().hex}",
                    "custom_id": r.custom_id,
                    "response": None,
                    "error": {"code": code, "message": message},
                }
                conn.execute(
                    LINES.update()
                    .where(LINES.c.batch_id == batch_id, LINES.c.line == r.line)
                    .values(state="failed", result=json.dumps(result))
                )
            if rows:
                conn.execute(
                    BATCHES.update().where(BATCHES.c.id == batch_id).values(failed=BATCHES.c.failed + len(rows))
                )
            return len(rows)

    def results(self, batch_id: str) -> tuple[list[str], list[str]]:
        """The output and error files' lines, in input order."""
        query = (
            sa.select(LINES.c.state, LINES.c.result)
            .where(LINES.c.batch_id == batch_id, LINES.c.state != "pending")
            .order_by(LINES.c.line)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [r.result for r in rows if r.state == "done"], [r.result for r in rows if r.state == "failed"]

    def finalize(self, batch_id: str, key_name: str, final_status: str) -> None:
        """Write the output and error files and end the batch in `final_status`, in one transaction."""
        done, failed = self.results(batch_id)
        now = int(time.time())
        values: dict[str, Any] = {"status": final_status, "lease_owner": None, "lease_until": 0.0}
        with self.engine.begin() as conn:
            for lines, column, name in ((done, "output_file_id", "output"), (failed, "error_file_id", "errors")):
                if not lines:
                    continue
                content = ("\n".join(lines) + "\n").encode()
                file_id = new_id("file")
                conn.execute(
                    FILES.insert().values(
                        id=file_id,
                        key_name=key_name,
                        purpose="batch_output",
                        filename=f"{batch_id}_{name}.jsonl",
                        bytes=len(content),
                        created_at=now,
                        content=content,
                    )
                )
                values[column] = file_id
            row = conn.execute(sa.select(BATCHES.c.times).where(BATCHES.c.id == batch_id)).one()
            values["times"] = json.dumps({**json.loads(row.times), f"{final_status}_at": now})
            conn.execute(BATCHES.update().where(BATCHES.c.id == batch_id).values(**values))


def _after(table: sa.Table, row_id: str) -> Any:
    """Rows listed after `row_id` in the order newest first, ties by id (`after=` pagination)."""
    created = sa.select(table.c.created_at).where(table.c.id == row_id).scalar_subquery()
    return sa.or_(table.c.created_at < created, sa.and_(table.c.created_at == created, table.c.id > row_id))
