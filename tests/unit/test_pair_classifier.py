"""The semantic cache's shipped cross-encoder: it loads from the repository, is symmetric, and decides the
issue's own examples; its held-out decisions are the benchmarked ones.

Precision and recall live in benchmarks/semantic_precision.py (held-out split); these tests pin behaviour
that a re-fit or a change of the scoring code could move without anyone re-measuring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_serve.router.pair_classifier import PairClassifier, shipped

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ROOT / "benchmarks" / "results" / "raw" / "semantic-cache-precision-candidates.json"
REPORT = ROOT / "benchmarks" / "results" / "semantic-cache-precision.json"


@pytest.fixture(scope="module")
def classifier() -> PairClassifier:
    return shipped()


def test_a_pair_scores_the_same_in_either_order(classifier: PairClassifier) -> None:
    a, b = "How do I reset my password?", "what's the way to reset my password"
    assert classifier.scores(a, [b])[0] == pytest.approx(classifier.scores(b, [a])[0], abs=1e-6)


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("How do I clean the filter of purifier Q7X2?", "how can i clean the filter of purifier Q7X2"),
        ("How do I clean the filter of purifier Q7X2?", "How can I clean the filter of purifier Q7X2, please?"),
        ("What are your opening hours on Saturday?", "when are you open on saturdays"),
        ("How do I reset my password?", "how do i reset my password"),  # the same text: certain
    ],
)
def test_paraphrases_are_served(classifier: PairClassifier, stored: str, asked: str) -> None:
    assert classifier.accepts(asked, stored), classifier.scores(asked, [stored])


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("How do I clean the filter of purifier Q7X2?", "How do I replace the filter of purifier Q7X2?"),
        ("Was I charged for the upgrade?", "Will I be charged for the upgrade?"),  # the tense example
        ("How do I move money from savings to checking?", "How do I move money from checking to savings?"),
        ("Can I get a refund after 30 days?", "Can I get a refund within 30 days?"),
        ("How do I log in to my account?", "How do I log out of my account?"),
    ],
)
def test_near_misses_are_not(classifier: PairClassifier, stored: str, asked: str) -> None:
    assert not classifier.accepts(asked, stored), classifier.scores(asked, [stored])


def test_held_out_decisions_are_the_benchmarked_ones(classifier: PairClassifier) -> None:
    """Re-score the held-out pairs nearest the threshold, where any change shows first: a change that moves a
    decision must be re-measured with benchmarks/semantic_precision.py before it ships."""
    data = json.loads(CANDIDATES.read_text())
    rows = data["heldout_shipped"]
    assert len(rows) >= 800
    floor = data["candidates"]["cross_encoder"]["cosine_floor"]
    near = sorted((r for r in rows if r["cosine"] >= floor), key=lambda r: abs(r["score"] - classifier.threshold))
    sample = near[:48]
    scores = classifier.pair_scores([r["a"] for r in sample], [r["b"] for r in sample])
    for row, s in zip(sample, scores, strict=True):
        assert s == pytest.approx(row["score"], abs=2e-3), row
        assert (s >= classifier.threshold) == row["served"] or abs(s - classifier.threshold) < 2e-3, row
    metrics = json.loads(REPORT.read_text())["metrics"]
    assert sum(r["served"] and not r["same"] for r in rows) == metrics["heldout_false_hits"]["value"]
    recall = sum(r["served"] and r["same"] for r in rows) / sum(r["same"] for r in rows)
    assert recall == pytest.approx(metrics["heldout_recall"]["value"], abs=1e-3)
