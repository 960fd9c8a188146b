"""`/v1/files` and `/v1/batches`: OpenAI's Files and Batch APIs, as the openai SDK calls them.

Files are uploaded as multipart (`purpose: batch`), kept in the batch store (a database every router
replica reads) and read back whole; a batch's output and error files are files of the same key with
purpose `batch_output`. Creating a batch only records it: a replica's runner (runner.py) claims it,
validates the input file and answers its lines. Everything is scoped to the calling key.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llm_serve.config import BatchConfig
from llm_serve.router.auth import KeyRing
from llm_serve.router.batches.input_file import ENDPOINTS
from llm_serve.router.batches.runner import BatchRunner
from llm_serve.router.batches.store import BatchStore, batch_object, file_object
from llm_serve.router.errors import OpenAIError
from llm_serve.router.stages.parse import read_json

WINDOW = re.compile(r"^(\d{1,4})h$")
MAX_LIST = 100
UPLOAD_PURPOSES = {"batch"}


def not_found(kind: str, object_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such {kind}: {object_id!r}", code="not_found", param="id")


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise OpenAIError(400, f"limit must be an integer from 1 to {MAX_LIST}", code="invalid_value", param="limit")
    return int(raw)


def page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": len(items) == limit,
    }


class FilesRoute:
    def __init__(self, config: BatchConfig, store: BatchStore, keys: KeyRing) -> None:
        self.config = config
        self.store = store
        self.keys = keys

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/files", self.upload, methods=["POST"])
        app.add_api_route("/v1/files", self.list, methods=["GET"])
        app.add_api_route("/v1/files/{file_id}", self.retrieve, methods=["GET"])
        app.add_api_route("/v1/files/{file_id}", self.delete, methods=["DELETE"])
        app.add_api_route("/v1/files/{file_id}/content", self.content, methods=["GET"])

    async def upload(self, request: Request) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise OpenAIError(
                400, "upload a file as multipart/form-data with `file` and `purpose`", code="invalid_request"
            )
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=self.config.max_file_bytes)
        except OpenAIError:
            raise
        except Exception as exc:  # a malformed multipart body
            raise OpenAIError(400, f"could not read the form: {exc}", code="invalid_request") from None
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise OpenAIError(
                400, f"purpose must be one of {sorted(UPLOAD_PURPOSES)}", code="invalid_value", param="purpose"
            )
        if not isinstance(upload, UploadFile):
            raise OpenAIError(400, "`file` is required", code="missing_required_parameter", param="file")
        content = await upload.read()
        await form.close()
        if not content:
            raise OpenAIError(400, "the file is empty", code="invalid_value", param="file")
        obj = await self.store.call(self.store.put_file, caller.name, purpose, upload.filename or "upload", content)
        return JSONResponse(obj)

    async def list(self, request: Request) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        limit = _limit(request, 100)
        rows = await self.store.call(
            self.store.list_files,
            caller.name,
            request.query_params.get("purpose"),
            limit,
            request.query_params.get("after"),
        )
        return JSONResponse(page([file_object(r) for r in rows], limit))

    async def retrieve(self, request: Request, file_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        row = await self.store.call(self.store.get_file, caller.name, file_id)
        if row is None:
            raise not_found("file", file_id)
        return JSONResponse(file_object(row))

    async def content(self, request: Request, file_id: str) -> Response:
        caller = self.keys.caller(request.headers)
        content = await self.store.call(self.store.file_content, caller.name, file_id)
        if content is None:
            raise not_found("file", file_id)
        return Response(content, media_type="application/jsonl")

    async def delete(self, request: Request, file_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        if not await self.store.call(self.store.delete_file, caller.name, file_id):
            raise not_found("file", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})


class BatchesRoute:
    def __init__(
        self, config: BatchConfig, store: BatchStore, keys: KeyRing, runner: BatchRunner, max_body_bytes: int
    ) -> None:
        self.config = config
        self.store = store
        self.keys = keys
        self.runner = runner
        self.max_body_bytes = max_body_bytes

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/batches", self.create, methods=["POST"])
        app.add_api_route("/v1/batches", self.list, methods=["GET"])
        app.add_api_route("/v1/batches/{batch_id}", self.retrieve, methods=["GET"])
        app.add_api_route("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"])

    async def create(self, request: Request) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        data = await read_json(request, self.max_body_bytes)
        input_file_id, endpoint, window = data.get("input_file_id"), data.get("endpoint"), data.get("completion_window")
        if not isinstance(input_file_id, str):
            raise OpenAIError(
                400, "input_file_id is required", code="missing_required_parameter", param="input_file_id"
            )
        if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
            raise OpenAIError(
                400, f"endpoint must be one of {sorted(ENDPOINTS)}", code="invalid_value", param="endpoint"
            )
        match = WINDOW.match(window) if isinstance(window, str) else None
        if match is None or not isinstance(window, str) or window not in self.config.completion_windows:
            raise OpenAIError(
                400,
                f"completion_window must be one of {self.config.completion_windows}",
                code="invalid_value",
                param="completion_window",
            )
        meta = data.get("metadata")
        if meta is not None and not (
            isinstance(meta, dict)
            and len(meta) <= 16
            and all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in meta.items()
            )
        ):
            raise OpenAIError(
                400,
                "metadata is at most 16 string pairs (keys 64, values 512 chars)",
                code="invalid_value",
                param="metadata",
            )
        unknown = set(data) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
        if unknown:
            name = sorted(unknown)[0]
            raise OpenAIError(
                400, f"Unrecognized request argument supplied: {name}", code="unknown_parameter", param=name
            )
        found = await self.store.call(self.store.get_file, caller.name, input_file_id)
        if found is None:
            raise not_found("file", input_file_id)
        if found.purpose != "batch":
            raise OpenAIError(
                400,
                f"file {input_file_id} has purpose {found.purpose!r}, not 'batch'",
                code="invalid_value",
                param="input_file_id",
            )
        hours = int(match.group(1))
        obj = await self.store.call(
            self.store.create_batch, caller.name, endpoint, input_file_id, window, hours * 3600.0, meta
        )
        self.runner.wake()
        return JSONResponse(obj)

    async def list(self, request: Request) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        limit = _limit(request)
        rows = await self.store.call(self.store.list_batches, caller.name, limit, request.query_params.get("after"))
        return JSONResponse(page([batch_object(r) for r in rows], limit))

    async def retrieve(self, request: Request, batch_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        row = await self.store.call(self.store.get_batch, caller.name, batch_id)
        if row is None:
            raise not_found("batch", batch_id)
        return JSONResponse(batch_object(row))

    async def cancel(self, request: Request, batch_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        row = await self.store.call(self.store.request_cancel, caller.name, batch_id)
        if row is None:
            raise not_found("batch", batch_id)
        if row.status not in ("cancelling", "cancelled"):
            raise OpenAIError(
                409, f"a batch that is {row.status} cannot be cancelled", code="invalid_state", param="batch_id"
            )
        self.runner.wake()
        return JSONResponse(batch_object(row))
