"""The request bodies of the API, described for /openapi.json (clients, docs, and schema-driven fuzzing).

The router reads bodies itself (stage by stage, so every refusal is OpenAI-shaped and says which
field is wrong), which leaves FastAPI nothing to describe. These models say what a body may hold:
OpenAI's public fields plus llm-serve's extensions (`rag`, `prompt`, `cache`); the Responses and
Anthropic Messages bodies are the adapters' own request models. vLLM's own extra
sampling fields are accepted too but not listed: they are vLLM's to document. Nothing validates
against these models; they are the contract as published, and `schemathesis` fuzzes the live router
from them (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from llm_serve.router.apis.anthropic_request import CountTokensRequest, MessagesRequest
from llm_serve.router.apis.responses_request import ResponsesRequest
from llm_serve.router.embeddings import EmbeddingRequest


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = Field(None, description="Usage on every chunk (vLLM's option).")


class RagOptions(BaseModel):
    """llm-serve: retrieve from a collection the key may search, and ground the answer on it."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = None
    top_k: int | None = Field(None, ge=1)
    filter: str | None = Field(None, description="A Milvus filter; AND-ed with a RAG alias's own.")
    include_text: bool = False


class PromptRef(BaseModel):
    """llm-serve: render a versioned registry prompt into the conversation."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str | None = None
    alias: str | None = None
    variables: dict[str, Any] | None = None


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    cache: bool | None = Field(None, description="llm-serve: false bypasses the caches for this request.")


class ChatCompletionBody(SamplingFields):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    rag: RagOptions | None = None
    prompt: PromptRef | None = None


class CompletionBody(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None


class BatchCreateBody(BaseModel):
    """`POST /v1/batches` (batches/routes.py checks these fields itself, with OpenAI's messages)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: str = Field(..., description="`24h` (the accepted windows are `batch.completion_windows`).")
    metadata: dict[str, str] | None = None


BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionBody,
    "/v1/completions": CompletionBody,
    "/v1/embeddings": EmbeddingRequest,
    # The API adapters validate against these very models (extra fields forbidden), so here the
    # published contract and the check are one.
    "/v1/responses": ResponsesRequest,
    "/v1/messages": MessagesRequest,
    "/v1/messages/count_tokens": CountTokensRequest,
    "/v1/batches": BatchCreateBody,
}


def install_request_schemas(app: FastAPI) -> None:
    """Describe the POST bodies in the app's OpenAPI document (FastAPI sees only `Request` parameters)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path, model in BODIES.items():
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
            operation = schema["paths"].get(path, {}).get("post")
            if operation is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
