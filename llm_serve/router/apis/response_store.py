"""Stored Responses API responses: what `GET /v1/responses/{id}` returns and `previous_response_id`
continues from.

A row holds the response object and the whole conversation up to and including it, as chat
messages, so continuing a thread is one read however long it is. The store is a database every
router replica reaches (the ledger's by default), not a replica's memory: a follow-up may land on
any replica. Rows belong to the key that created them; another key's id reads as absent (404), as
OpenAI answers, so ids reveal nothing across tenants. Calls run in a thread: the database client
blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import sqlalchemy as sa

from llm_serve.router.sql_engine import LazyEngine

METADATA = sa.MetaData()
RESPONSES = sa.Table(
    "responses",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("key_name", sa.String(128), nullable=False, index=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False, index=True),
    sa.Column("response", sa.Text, nullable=False),
    sa.Column("conversation", sa.Text, nullable=False),
)


class ResponseStore:
    def __init__(self, url: str, ttl_s: float, max_bytes: int) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._tables = LazyEngine(url, METADATA)

    @property
    def engine(self) -> sa.Engine:
        return self._tables.get()

    async def put(self, key_name: str, response: dict[str, Any], conversation: list[dict[str, Any]]) -> bool:
        """Store a finished response; False when its conversation is over the size limit (not stored)."""
        text = json.dumps(conversation)
        if len(text) > self.max_bytes:
            return False
        now = time.time()
        row = {
            "id": response["id"],
            "key_name": key_name,
            "created": now,
            "expires": now + self.ttl_s,
            "response": json.dumps(response),
            "conversation": text,
        }
        await asyncio.to_thread(self._insert, row)
        return True

    def _insert(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(RESPONSES.insert().values(**row))
            conn.execute(RESPONSES.delete().where(RESPONSES.c.expires < row["created"]))

    async def get(self, key_name: str, response_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        row = await asyncio.to_thread(self._select, key_name, response_id)
        if row is None:
            return None
        return json.loads(row.response), json.loads(row.conversation)

    def _select(self, key_name: str, response_id: str) -> Any:
        query = sa.select(RESPONSES.c.response, RESPONSES.c.conversation).where(
            RESPONSES.c.id == response_id, RESPONSES.c.key_name == key_name, RESPONSES.c.expires >= time.time()
        )
        with self.engine.connect() as conn:
            return conn.execute(query).first()

    async def delete(self, key_name: str, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, key_name, response_id)

    def _delete(self, key_name: str, response_id: str) -> bool:
        query = RESPONSES.delete().where(RESPONSES.c.id == response_id, RESPONSES.c.key_name == key_name)
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount > 0
