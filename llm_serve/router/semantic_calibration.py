"""`llm-serve cache calibrate`: the verifier threshold that reaches a target precision on a deployment's own pairs.

Why per deployment: the shipped threshold was chosen on support-style questions; another product's traffic
(code questions, medical wording) may put paraphrases and near misses elsewhere on the verifier's score.
A platform team labels a few hundred pairs from its own logs, and this measures precision (with its 95 %
Wilson interval, which stays honest when the count is small) and recall at every threshold, prints the
lowest score threshold whose precision reaches the target, and draws the curve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_serve.config import Config
from llm_serve.jsonl import LineErrors, read_objects
from llm_serve.router.semantic_verifier import Verifier

# Finer near 1: a cross-encoder's scores crowd there, and so do the thresholds that reach high precision.
GRID = (
    tuple(round(0.02 * i, 2) for i in range(1, 46))
    + tuple(round(0.9 + 0.01 * i, 2) for i in range(1, 10))
    + (
        0.995,
        0.999,
    )
)


@dataclass
class Point:
    threshold: float
    hits: int
    true_hits: int
    positives: int

    @property
    def precision(self) -> float | None:
        return self.true_hits / self.hits if self.hits else None

    @property
    def recall(self) -> float:
        return self.true_hits / self.positives if self.positives else 0.0

    def interval(self) -> tuple[float, float] | None:
        if not self.hits:
            return None
        from scipy.stats import binomtest

        ci = binomtest(self.true_hits, self.hits).proportion_ci(confidence_level=0.95, method="wilson")
        return float(ci.low), float(ci.high)


class PairsError(ValueError):
    """The pairs file cannot be used; the message lists every bad line as file:line."""


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """Lines of {"a", "b", "same"}; every bad line is reported at once (llm_serve.jsonl)."""
    errors = LineErrors(str(path), limit=20)
    pairs = []
    for n, obj in read_objects(path, errors, PairsError):
        if not isinstance(obj.get("a"), str) or not isinstance(obj.get("b"), str) or not obj["a"] or not obj["b"]:
            errors.report(n, 'needs non-empty "a" and "b" strings')
        elif not isinstance(obj.get("same"), bool):
            errors.report(n, 'needs "same": true or false')
        else:
            pairs.append(obj)
    if errors:
        raise PairsError("\n".join(errors.all()))
    if not any(p["same"] for p in pairs) or all(p["same"] for p in pairs):
        raise PairsError(f"{path}: needs pairs labelled both same: true and same: false")
    return pairs


def cosines(pairs: list[dict[str, Any]], source: str) -> list[float]:
    from sentence_transformers import SentenceTransformer

    from llm_serve.models.resolve import resolve_embedding_source

    texts = sorted({p["a"] for p in pairs} | {p["b"] for p in pairs})
    model = SentenceTransformer(resolve_embedding_source(source), device="cpu")
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=True)
    index = {t: i for i, t in enumerate(texts)}
    return [float(vectors[index[p["a"]]] @ vectors[index[p["b"]]]) for p in pairs]


def verifier_scores(pairs: list[dict[str, Any]], cos: list[float], config: Config) -> tuple[list[float], float]:
    """(score per pair, the shipped threshold) of the configured verifier; below the cosine floor a pair is never
    served, so it scores 0."""
    semantic = config.cache.semantic
    above = [i for i, c in enumerate(cos) if c >= semantic.threshold]
    scores = [0.0] * len(pairs)
    if semantic.verifier == "cross_encoder":
        from llm_serve.router.pair_classifier import PairClassifier

        classifier = PairClassifier()
        found = classifier.pair_scores([pairs[i]["a"] for i in above], [pairs[i]["b"] for i in above])
        for i, s in zip(above, found, strict=True):
            scores[i] = s
        return scores, classifier.threshold
    if semantic.verifier == "learned":
        verifier = Verifier()
        for i in above:
            scores[i] = verifier.score(pairs[i]["a"], pairs[i]["b"], cos[i], semantic.synonyms)
        return scores, verifier.threshold
    raise PairsError(f"verifier {semantic.verifier!r} has no score to calibrate: use cross_encoder or learned")


def sweep(pairs: list[dict[str, Any]], cos: list[float], config: Config) -> tuple[list[Point], list[float], float]:
    """Precision and recall at every threshold of GRID; also the scores and the shipped threshold."""
    scores, shipped = verifier_scores(pairs, cos, config)
    positives = sum(bool(p["same"]) for p in pairs)
    points = []
    for t in GRID:
        accepted = [s >= t for s in scores]
        hits = sum(accepted)
        true_hits = sum(a and bool(p["same"]) for a, p in zip(accepted, pairs, strict=True))
        points.append(Point(t, hits, true_hits, positives))
    return points, scores, shipped


def choose(points: list[Point], target: float) -> Point | None:
    """The lowest threshold whose precision, and that of every higher one that serves anything, reaches target."""
    for i, point in enumerate(points):
        rest = [p for p in points[i:] if p.hits]
        if point.hits and all((p.precision or 0) >= target for p in rest):
            return point
    return None


def plot(points: list[Point], chosen: Point | None, shipped: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [p.threshold for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(ts, [p.precision if p.precision is not None else float("nan") for p in points], label="precision")
    low = [(p.interval() or (float("nan"),) * 2)[0] for p in points]
    high = [(p.interval() or (float("nan"),) * 2)[1] for p in points]
    ax.fill_between(ts, low, high, alpha=0.2, label="precision, Wilson 95 %")
    ax.plot(ts, [p.recall for p in points], ls="--", label="recall (hit rate on paraphrases)")
    ax.axvline(shipped, color="grey", ls=":", label=f"shipped threshold {shipped:.2f}")
    if chosen is not None:
        ax.axvline(chosen.threshold, color="tab:green", ls=":", label=f"calibrated {chosen.threshold:.2f}")
    ax.set(xlabel="verifier score threshold", ylabel="fraction", ylim=(-0.02, 1.05), title="Semantic cache calibration")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def report(points: list[Point], chosen: Point | None, target: float) -> dict[str, Any]:
    def row(p: Point) -> dict[str, Any]:
        return {
            "threshold": p.threshold,
            "precision": p.precision,
            "precision_wilson95": p.interval(),
            "recall": round(p.recall, 4),
            "hits": p.hits,
            "false_hits": p.hits - p.true_hits,
        }

    return {
        "target_precision": target,
        "chosen": row(chosen) if chosen else None,
        "sweep": [row(p) for p in points],
    }


def write(out: Path, data: dict[str, Any]) -> None:
    out.write_text(json.dumps(data, indent=1) + "\n")
