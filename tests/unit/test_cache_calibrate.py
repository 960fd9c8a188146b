"""`llm-serve cache calibrate`: a deployment's own labelled pairs in, a threshold with its evidence out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_serve.cli import main
from llm_serve.router import semantic_calibration as cal

PAIRS = [
    {"a": "How do I reset my password?", "b": "how can i reset my password", "same": True},
    {"a": "What are your opening hours?", "b": "When are you open?", "same": True},
    {"a": "How do I cancel my order?", "b": "How can I cancel my order?", "same": True},
    {"a": "Was I charged twice?", "b": "Will I be charged twice?", "same": False},
    {"a": "How do I log in?", "b": "How do I log out?", "same": False},
    {"a": "Do you ship to Canada?", "b": "Do you ship to Mexico?", "same": False},
]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_calibrate_prints_a_threshold_and_writes_its_evidence(tmp_path: Path, capsys) -> None:
    pairs = write(tmp_path / "pairs.jsonl", PAIRS)
    code = main(["cache", "calibrate", "--pairs", str(pairs), "--target-precision", "0.98", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verifier_threshold:" in out
    report = json.loads((tmp_path / "cache-calibration.json").read_text())
    chosen = report["chosen"]
    assert chosen["precision"] >= 0.98 and chosen["false_hits"] == 0
    low, high = chosen["precision_wilson95"]
    assert 0 < low < high <= 1  # a handful of pairs: the interval says how little they prove
    assert (tmp_path / "cache-calibration.png").stat().st_size > 1000


def test_bad_pairs_are_reported_by_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"a": "x", "b": "y", "same": true}\nnot json\n{"a": "x", "same": false}\n{"a": "x", "b": "y", "same": 1}\n'
    )
    with pytest.raises(cal.PairsError) as err:
        cal.read_pairs(bad)
    message = str(err.value)
    assert "bad.jsonl:2" in message and "bad.jsonl:3" in message and "bad.jsonl:4" in message
    assert main(["cache", "calibrate", "--pairs", str(bad)]) == 2


def test_one_label_only_is_refused(tmp_path: Path) -> None:
    with pytest.raises(cal.PairsError, match="both"):
        cal.read_pairs(write(tmp_path / "same.jsonl", [p for p in PAIRS if p["same"]]))


def test_choose_needs_every_higher_threshold_to_hold() -> None:
    points = [cal.Point(0.1, 10, 8, 8), cal.Point(0.2, 8, 8, 8), cal.Point(0.3, 5, 4, 8), cal.Point(0.4, 2, 2, 8)]
    assert cal.choose(points, 0.98) is points[3]
    assert cal.choose([cal.Point(0.1, 4, 4, 4), cal.Point(0.2, 0, 0, 4)], 0.98).threshold == 0.1
