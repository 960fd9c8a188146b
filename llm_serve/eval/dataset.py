"""Evaluation sets: JSONL, one question per line, validated completely before any request is sent.

As with fine-tuning data (train/data.py), every problem is reported at once with its `file:line`,
because finding the third bad line only after the first two were fixed, each time after a run
against a slow endpoint, wastes far more time than reading one complete list.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_serve.jsonl import LineErrors, read_objects

KNOWN_KEYS = frozenset(
    {"id", "question", "reference", "reference_contexts", "variables", "must_contain", "expect_json"}
)


class DatasetError(ValueError):
    """A dataset the user must fix; each entry of `errors` names the file and 1-based line."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


@dataclass(frozen=True)
class EvalRow:
    """One question with what it is scored against."""

    line: int
    id: str
    question: str
    reference: str | None = None
    reference_contexts: tuple[str, ...] = ()
    variables: dict[str, Any] | None = None
    must_contain: tuple[str, ...] = ()
    # `expect_json`: the answer must parse as JSON (json_parse_success_rate); a schema also validates it.
    expect_json: bool = False
    json_schema: dict[str, Any] | None = None

    def prompt_variables(self) -> dict[str, Any]:
        """What a registry prompt is rendered with: the row's own `variables`, else the question.

        The row's object replaces the default instead of extending it, because prompts that forbid
        extra variables (ticket-triage takes only `ticket`) would reject an added `question`.
        """
        return dict(self.variables) if self.variables is not None else {"question": self.question}


def _text(value: Any, what: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{what} is empty"
    return None


def _texts(value: Any, what: str) -> str | None:
    if not isinstance(value, list) or not value:
        return f"{what} must be a non-empty list of strings"
    for i, item in enumerate(value):
        if (problem := _text(item, f"{what}[{i}]")) is not None:
            return problem
    return None


def _expect_json(value: Any) -> str | None:
    """`true`/`false`, or a JSON Schema the answer must also satisfy (checked here, not on row 300)."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, dict):
        return f"'expect_json' must be true, false or a JSON Schema object, got {type(value).__name__}"
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(value).check_schema(value)
    except exceptions.SchemaError as exc:
        return f"'expect_json' is not a valid JSON Schema: {exc.message}"
    return None


def _parse(obj: dict[str, Any], n: int) -> tuple[EvalRow | None, list[str]]:
    problems: list[str] = []
    unknown = sorted(set(obj) - KNOWN_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (allowed: {sorted(KNOWN_KEYS)})")
    if "question" not in obj:
        problems.append("missing 'question'")
    elif (problem := _text(obj["question"], "'question'")) is not None:
        problems.append(problem)
    if "reference" in obj and (problem := _text(obj["reference"], "'reference'")) is not None:
        problems.append(problem)
    for key in ("reference_contexts", "must_contain"):
        if key in obj and (problem := _texts(obj[key], f"'{key}'")) is not None:
            problems.append(problem)
    if "expect_json" in obj and (problem := _expect_json(obj["expect_json"])) is not None:
        problems.append(problem)
    if "variables" in obj and not isinstance(obj["variables"], dict):
        problems.append(f"'variables' must be an object, got {type(obj['variables']).__name__}")
    row_id = obj.get("id", n)
    if not isinstance(row_id, str | int) or isinstance(row_id, bool):
        problems.append(f"'id' must be a string or an integer, got {type(row_id).__name__}")
    if problems:
        return None, problems
    return (
        EvalRow(
            line=n,
            id=str(row_id),
            question=obj["question"],
            reference=obj.get("reference"),
            reference_contexts=tuple(obj.get("reference_contexts") or ()),
            variables=obj.get("variables"),
            must_contain=tuple(obj.get("must_contain") or ()),
            expect_json=obj.get("expect_json") not in (None, False),
            json_schema=obj["expect_json"] if isinstance(obj.get("expect_json"), dict) else None,
        ),
        [],
    )


def load_dataset(path: str | Path, limit: int | None = None, max_listed: int = 20) -> list[EvalRow]:
    """Read and validate the whole file (even past `limit`: a bad file is bad however much of it runs)."""
    errors = LineErrors(str(path), max_listed)
    rows: list[EvalRow] = []
    first_line_of: dict[str, int] = {}
    for n, obj in read_objects(path, errors, DatasetError):
        row, problems = _parse(obj, n)
        for problem in problems:
            errors.report(n, problem)
        if row is None:
            continue
        if row.id in first_line_of:  # results are keyed by id: a duplicate would hide a row
            errors.report(n, f"duplicate id {row.id!r} (first on line {first_line_of[row.id]})")
            continue
        first_line_of[row.id] = n
        rows.append(row)

    if errors:
        raise DatasetError("\n".join(errors.all()), errors.all())
    if not rows:
        raise DatasetError(f"{path}: no rows (the file is empty)")
    return rows[:limit] if limit else rows


def file_digest(path: str | Path) -> str:
    """Short content hash recorded with the results, so a score can be traced to the exact questions."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
