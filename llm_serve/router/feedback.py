"""`POST /v1/feedback`: what the user thought of an answer, tied to its ledger row and its key.

The body names the request by the id the answer came back with (`x-request-id`, or the client's own)
and says any of: `rating` ("up" / "down"), `score` (1-5), `task_completed`, `escalated` (handed to a
human), `comment`. Only the key that made the request can give its feedback; another key's request id
is answered like an unknown one (404), so ids cannot be probed across tenants. Feedback lands beside
the ledger (router/feedback_store.py), is summed per model, adapter and prompt version in
`/admin/usage`, counted in Prometheus, and read by `llm-serve eval --feedback` as report slices.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.requests import Request

from llm_serve.config import Config
from llm_serve.router.auth import KeyRing
from llm_serve.router.context import REQUEST_ID
from llm_serve.router.errors import OpenAIError, invalid_body
from llm_serve.router.feedback_store import COMMENT_MAX_CHARS
from llm_serve.router.stages.parse import read_json
from llm_serve.router.state import StateClient, StateUnavailable

# Bounded label values: a prompt is `name@version` (the hash dropped), models and adapters are the configured ones.
UNKNOWN = "unknown"


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(..., pattern=REQUEST_ID.pattern, description="The answer's x-request-id.")
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    score: int | None = Field(None, ge=1, le=5, description="Satisfaction from 1 to 5.")
    task_completed: bool | None = Field(None, description="Did the answer get the user's task done?")
    escalated: bool | None = Field(None, description="Was the conversation handed to a human?")
    comment: str | None = Field(None, max_length=COMMENT_MAX_CHARS, description="Free text.")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackBody:
        if all(v is None for v in (self.rating, self.score, self.task_completed, self.escalated, self.comment)):
            raise ValueError("give at least one of rating, score, task_completed, escalated, comment")
        return self

    def fields(self) -> dict[str, Any]:
        rating = None if self.rating is None else (1 if self.rating == "up" else -1)
        return {
            "rating": rating,
            "score": self.score,
            "task_completed": self.task_completed,
            "escalated": self.escalated,
            "comment": self.comment,
        }


def signals(body: FeedbackBody) -> list[str]:
    """What one submission says, as the `signal` label values of the feedback counter."""
    out = []
    if body.rating is not None:
        out.append("thumbs_up" if body.rating == "up" else "thumbs_down")
    if body.task_completed is not None:
        out.append("task_completed" if body.task_completed else "task_not_completed")
    if body.escalated is not None:
        out.append("escalated" if body.escalated else "not_escalated")
    return out


class FeedbackRoute:
    def __init__(self, config: Config, keys: KeyRing, state: StateClient, metrics: Any) -> None:
        self.config = config
        self.keys = keys
        self.state = state
        self.metrics = metrics
        self.models = {m.id for m in config.models}

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/feedback", self.handle, methods=["POST"], status_code=200)

    async def handle(self, request: Request) -> dict[str, Any]:
        caller = self.keys.caller(request.headers)
        data = await read_json(request, self.config.server.max_body_bytes)
        try:
            body = FeedbackBody.model_validate(data)
        except ValidationError as exc:
            raise invalid_body(exc.errors()) from None
        if not self.config.ledger.enabled:
            raise OpenAIError(404, "feedback needs the ledger (ledger.enabled: true)", code="feedback_unavailable")
        try:
            stored = await self.state.feedback(caller.name, body.request_id, body.fields())
        except StateUnavailable as exc:
            raise OpenAIError(503, str(exc), code="state_unavailable", headers={"retry-after": "1"}) from None
        if stored is None:
            raise OpenAIError(
                404,
                f"no request '{body.request_id}' of the API key '{caller.name}' is in the ledger",
                code="request_not_found",
                param="request_id",
            )
        self._count(stored, body)
        return {"object": "feedback", **_public(stored)}

    def _count(self, stored: dict[str, Any], body: FeedbackBody) -> None:
        model = stored["model"] if stored["model"] in self.models else UNKNOWN
        labels = {
            "model": model,
            "adapter": stored["adapter"] or "",
            "prompt": (stored["prompt"] or "").split("+", 1)[0],
        }
        for signal in signals(body):
            self.metrics.feedback.inc(1, {**labels, "signal": signal})
        if body.score is not None:
            self.metrics.feedback_score.observe(body.score, {"model": model})


def _public(stored: dict[str, Any]) -> dict[str, Any]:
    rating = stored["rating"]
    return {
        "request_id": stored["request_id"],
        "model": stored["model"],
        "adapter": stored["adapter"],
        "prompt": stored["prompt"],
        "rating": None if rating is None else ("up" if rating > 0 else "down"),
        "score": stored["score"],
        "task_completed": stored["task_completed"],
        "escalated": stored["escalated"],
        "comment": stored["comment"],
        "created_at": int(stored["ts"]),
        "updated_at": int(stored["updated_ts"]),
    }
