"""A batch's input file: OpenAI's JSONL, one request per line, checked whole before any line runs.

Each line is `{"custom_id", "method": "POST", "url", "body"}`, its `url` the batch's endpoint and its
`custom_id` unique in the file. A file with any bad line fails the batch at validation with every
problem listed (up to a cap), as OpenAI's does, so nothing of a malformed file is paid for. The
bodies themselves are checked when their line runs, by the same stages as an HTTP request: a bad
body fails its own line (in the error file), not the batch.
"""

from __future__ import annotations

import json
from typing import Any

from llm_serve.router.batches.store import Line

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
MAX_REPORTED_ERRORS = 20


def parse_lines(content: bytes, endpoint: str, max_lines: int) -> tuple[list[Line], list[dict[str, Any]]]:
    """The file's requests, or the errors that fail the batch (OpenAI's `errors.data` items)."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def bad(number: int, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": number})

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [{"code": "invalid_file", "message": "the file is not UTF-8 text", "param": None, "line": None}]
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            bad(number, "invalid_json_line", f"line {number} is not JSON: {exc}")
            continue
        if not isinstance(item, dict):
            bad(number, "invalid_json_line", f"line {number} is not a JSON object")
            continue
        custom_id, url, body = item.get("custom_id"), item.get("url"), item.get("body")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
            bad(number, "missing_custom_id", "custom_id must be a string of 1 to 512 characters", "custom_id")
            continue
        if custom_id in seen:
            bad(number, "duplicate_custom_id", f"custom_id {custom_id!r} appears more than once", "custom_id")
            continue
        seen.add(custom_id)
        if item.get("method", "POST") != "POST":
            bad(number, "invalid_method", "method must be POST", "method")
            continue
        if url != endpoint:
            bad(number, "mismatched_endpoint", f"url {url!r} is not the batch's endpoint {endpoint!r}", "url")
            continue
        if not isinstance(body, dict):
            bad(number, "invalid_body", "body must be a JSON object", "body")
            continue
        if not isinstance(body.get("model"), str):
            bad(number, "missing_required_parameter", "body.model is required", "body.model")
            continue
        lines.append(Line(number, custom_id, body))
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the file holds no requests", "param": None, "line": None})
    if len(lines) > max_lines:
        errors.append(
            {
                "code": "too_many_requests",
                "message": f"the file holds {len(lines)} requests; a batch may hold {max_lines}",
                "param": None,
                "line": None,
            }
        )
    return lines, errors
