"""Failures of the RAG plane, said in its own terms.

The retriever and the store know nothing of HTTP: they say what kind of failure it was (the caller
asked for something invalid, a collection does not exist, a backing service is down, or the search
itself failed), a stable code and the field at fault. The router maps the kind to a status
(`router/stages/retrieve.py`), and the ingest CLI prints the message.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["invalid_request", "not_found", "unavailable", "failed"]


class RagError(RuntimeError):
    """`param` names a field of the retrieval request (`collection`, `filter`, `top_k`) or `question`."""

    def __init__(
        self, message: str, *, kind: ErrorKind = "failed", code: str = "store_error", param: str | None = None
    ):
        super().__init__(message)
        self.message, self.kind, self.code, self.param = message, kind, code, param


class StoreError(RagError):
    """A vector-store failure (unknown collection, bad filter, bad name, a failed search)."""
