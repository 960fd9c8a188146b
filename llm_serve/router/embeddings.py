"""POST /v1/embeddings: OpenAI's request and response shapes over the embedding deployment."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_serve.router.errors import OpenAIError, invalid_body


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Token-array input is refused: each model has its own tokenizer."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def parse_embedding_request(data: dict[str, Any], max_inputs: int) -> tuple[EmbeddingRequest, list[str]]:
    """Validate the body and return the texts; every refusal names the field, as OpenAI does."""
    try:
        request = EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise OpenAIError(400, "input must not be empty", code="invalid_value", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise OpenAIError(400, "token-array input is not supported; send the text", code="invalid_value", param="input")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise OpenAIError(400, f"input[{empty[0]}] is empty", code="invalid_value", param="input")
    if len(texts) > max_inputs:
        raise OpenAIError(
            400, f"{len(texts)} inputs in one request; at most {max_inputs}", code="invalid_value", param="input"
        )
    return request, texts


def embedding_response(model_id: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    def encode(row: np.ndarray) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        return row.tolist()

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(vectors)],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
