"""Reading a user's JSONL file so that every problem is reported at once, each naming `file:line`.

Training data and evaluation sets are both hand-edited JSONL; one run that lists all the bad lines
saves a fix-rerun loop per line. The readers only add what their rows must contain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class LineErrors:
    """The problems found so far: the first `limit` listed, the rest only counted."""

    def __init__(self, source: str, limit: int) -> None:
        self.source, self.limit = source, limit
        self.listed: list[str] = []
        self.dropped = 0

    def report(self, line: int | None, message: str) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}")
        else:
            self.dropped += 1

    def __bool__(self) -> bool:
        return bool(self.listed)

    def all(self) -> list[str]:
        """The listed problems, plus how many more there were."""
        more = [f"{self.source}: ... and {self.dropped} more error(s) not shown"] if self.dropped else []
        return [*self.listed, *more]


def read_objects(
    path: str | Path, errors: LineErrors, error_cls: type[Exception]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line holding a JSON object; blank lines are skipped, and lines that
    are not UTF-8, not JSON or not an object are reported to `errors`. An unreadable file raises `error_cls`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error_cls(f"{errors.source}: cannot read dataset: {exc.strerror or exc}") from exc
    for n, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            errors.report(n, f"not valid UTF-8 (byte {exc.start})")
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.report(n, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            errors.report(n, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield n, obj
