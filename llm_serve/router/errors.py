"""Errors in OpenAI's wire format, so clients' own error handling (openai.NotFoundError, ...) works.

Every failure leaves the router as `{"error": {"message", "type", "param", "code"}}` with the status
OpenAI would use; nothing reaches the client as a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from llm_serve.rag.errors import RagError

logger = logging.getLogger("llm_serve.router")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "api_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class OpenAIError(Exception):
    """An error with everything needed to answer it in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_engine_error(error: Any) -> OpenAIError:
    """Map vLLM's ErrorResponse onto ours, naming the context-length case as OpenAI does."""
    info = getattr(error, "error", error)
    message = str(getattr(info, "message", info))
    status = int(getattr(info, "code", 500) or 500)
    if status < 400 or status > 599:
        status = 500
    param = getattr(info, "param", None)
    code = None
    if "maximum context length" in message:
        status, code = 400, "context_length_exceeded"
    elif status == 404:
        code = "model_not_found"
    elif status == 400:
        code = "invalid_value"
    return OpenAIError(status, message, code=code, param=param)


# How each kind of RAG failure is answered.
STATUS_OF_RAG_KIND = {"invalid_request": 400, "not_found": 404, "unavailable": 503, "failed": 500}


def from_rag_error(exc: RagError) -> OpenAIError:
    """A RAG failure as the client sees it: the status of its kind, `param` named as in the request."""
    param = "messages" if exc.param == "question" else (f"rag.{exc.param}" if exc.param else None)
    return OpenAIError(STATUS_OF_RAG_KIND[exc.kind], exc.message, code=exc.code, param=param)


def invalid_body(errors: list[Any], prefix: str = "") -> OpenAIError:
    """A 422 naming every bad field (pydantic's error list), `param` being the first one's dotted path."""
    parts, first = [], None
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        path = ".".join([prefix, *loc] if prefix else loc) or "body"
        first = first or path
        parts.append(f"{path}: {err.get('msg')}")
    return OpenAIError(422, "; ".join(parts) or "invalid request body", code="invalid_value", param=first)


ErrorShape = Callable[["OpenAIError"], JSONResponse]


def add_error_shape(app: FastAPI, prefix: str, shape: ErrorShape) -> None:
    """Answer errors under `prefix` in another API's dialect (Anthropic's clients parse their own shape).

    Errors raised before a route runs (405, 404, body validation) reach the app-level handlers, not the
    route, so the dialect has to be known here too.
    """
    shapes: list[tuple[str, ErrorShape]] = getattr(app.state, "error_shapes", [])
    app.state.error_shapes = [*shapes, (prefix, shape)]


def route_path(scope: Any) -> str:
    """The path the app's routes match: below a Serve route prefix (`root_path`), not the URL's."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _respond(request: Request, exc: OpenAIError) -> JSONResponse:
    path = route_path(request.scope)
    for prefix, shape in getattr(request.app.state, "error_shapes", []):
        if path.startswith(prefix):
            return shape(exc)
    return exc.response()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return _respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(request, invalid_body(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _respond(request, OpenAIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        response = _respond(request, OpenAIError(500, f"internal error ({type(exc).__name__})", code="internal_error"))
        trace_id = request.scope.get("state", {}).get("trace_id")
        if trace_id:  # the tracing middleware's span has ended by now; its id is what support needs
            response.headers["x-trace-id"] = trace_id
        return response
