"""Fit the semantic cache's verifier on the tuning split and write llm_serve/router/semantic_verifier.json.

Only the tuning split is read (benchmarks/semantic_pairs.py draws it by group with a fixed seed); the
held-out split is for benchmarks/semantic_precision.py alone. Only pairs at or above the cosine floor are
used, because the cache only ever asks the verifier about candidates above it. The regularisation and the
score threshold are chosen on out-of-fold scores (grouped 5-fold cross-validation on the tuning split), so
the threshold is not set on scores the model was fitted to: the lowest score at which out-of-fold precision
reaches --target-precision.

    .venv/bin/python benchmarks/train_semantic_verifier.py [--target-precision 0.99] [--floor 0.6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.semantic_pairs import cosines, split  # noqa: E402
from llm_serve.router.question_frame import frame  # noqa: E402
from llm_serve.router.semantic_verifier import CONTRADICTIONS, FEATURES, WEIGHTS, features  # noqa: E402

C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
# A contradiction seen on at most this share of the tuning paraphrases, and at least VETO_RATIO times as
# often on the near misses, vetoes a hit outright. Why: decisive but rare facts (past against future,
# "log in" against "log out") fire on a few per cent of pairs, so a regularised linear weight stays too
# small to outvote a cosine of 0.97; the learned weights then only rank what no veto rejected.
VETO_MAX_POSITIVE_RATE = 0.025
VETO_RATIO = 2.0
# The verifier must be monotone in its evidence: a higher cosine or fewer differences can only raise the
# score, a contradiction can only lower it. Unconstrained, the fit learned that questions differing in more
# words are likelier paraphrases (the labelled near misses change one word, paraphrases reword), which would
# serve unrelated questions. Signs: +1 at least zero, -1 at most zero.
SIGNS = {"clean_match": 1, "cosine": 1, "cosine_sq": 1, "jaccard": 1, "no_content_change": 1}


def sign(feature: str) -> int:
    return SIGNS.get(feature, -1)


class MonotoneLogistic:
    """L2-regularised logistic regression with sign-bounded coefficients (scipy's L-BFGS-B); features are
    standardised first so that C means what it means in scikit-learn."""

    def __init__(self, c: float) -> None:
        self.c = c

    def fit(self, x: np.ndarray, y: np.ndarray) -> MonotoneLogistic:
        from scipy.optimize import minimize
        from sklearn.preprocessing import StandardScaler

        self.scaler = StandardScaler().fit(x)
        z = self.scaler.transform(x)
        t = y.astype(float)
        _, d = z.shape

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            logits = z @ w[:d] + w[d]
            p = 1 / (1 + np.exp(-logits))
            eps = 1e-12
            value = -np.sum(t * np.log(p + eps) + (1 - t) * np.log(1 - p + eps)) + 0.5 / self.c * w[:d] @ w[:d]
            grad = np.append(z.T @ (p - t) + w[:d] / self.c, np.sum(p - t))
            return value, grad

        bounds = [(0, None) if sign(f) > 0 else (None, 0) for f in FEATURES] + [(None, None)]
        # A feature that never varies (scale 0) carries no evidence: pin it to zero.
        bounds = [(0, 0) if i < d and self.scaler.scale_[i] == 0 else b for i, b in enumerate(bounds)]
        result = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", bounds=bounds)
        self.coef, self.intercept = result.x[:d], result.x[d]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.scaler.transform(x) @ self.coef + self.intercept)))


def design(pairs: list[dict], cos: np.ndarray) -> np.ndarray:
    return np.array([features(frame(p["a"]), frame(p["b"]), float(c)) for p, c in zip(pairs, cos, strict=True)])


def threshold_for(scores: np.ndarray, truth: np.ndarray, target: float) -> tuple[float, float, float]:
    """(threshold, precision, recall): the lowest score whose accepted set reaches `target` precision."""
    order = np.argsort(-scores)
    best = (1.0, float("nan"), 0.0)
    hits = true = 0
    for rank, i in enumerate(order, start=1):
        hits, true = rank, true + int(truth[i])
        nxt = scores[order[rank]] if rank < len(order) else -1.0
        if nxt == scores[i]:
            continue  # ties are accepted together
        if true / hits >= target:
            best = (float(scores[i]), true / hits, true / max(1, int(truth.sum())))
    return best


def vetoes(x: np.ndarray, y: np.ndarray) -> list[str]:
    chosen = []
    for name in CONTRADICTIONS:
        column = x[:, FEATURES.index(name)] > 0
        positive, negative = column[y].mean(), column[~y].mean()
        if positive <= VETO_MAX_POSITIVE_RATE and negative >= VETO_RATIO * max(positive, 1e-9):
            chosen.append(name)
    return chosen


def vetoed(x: np.ndarray, names: list[str]) -> np.ndarray:
    if not names:
        return np.zeros(len(x), dtype=bool)
    return (x[:, [FEATURES.index(n) for n in names]] > 0).any(axis=1)


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=5).split(x, y, groups):
        names = vetoes(x[train], y[train])
        fit = ~vetoed(x[train], names)
        model = MonotoneLogistic(c).fit(x[train][fit], y[train][fit])
        scores[test] = np.where(vetoed(x[test], names), 0.0, model.predict(x[test]))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--floor", type=float, default=0.6, help="cosine floor: candidates below are never served")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    tuning = split()["tuning"]
    cos = cosines(tuning)
    keep = cos >= args.floor
    pairs = [p for p, k in zip(tuning, keep, strict=True) if k]
    x = design(pairs, cos[keep])
    y = np.array([bool(p["same"]) for p in pairs])
    groups = np.array([p["group"] for p in pairs])
    print(f"tuning pairs at or above cosine {args.floor}: {len(pairs)} of {len(tuning)} ({int(y.sum())} same)")

    tried = []
    for c in C_GRID:
        oof = out_of_fold(x, y, groups, c)
        t, precision, recall = threshold_for(oof, y, args.target_precision)
        tried.append({"C": c, "threshold": t, "oof_precision": precision, "oof_recall": recall})
        print(f"  C={c}: out-of-fold recall {recall:.3f} at precision {precision:.3f} (score >= {t:.3f})")
    best = max(tried, key=lambda r: (r["oof_recall"], -r["C"]))

    names = vetoes(x, y)
    fit = ~vetoed(x, names)
    model = MonotoneLogistic(best["C"]).fit(x[fit], y[fit])
    print(f"vetoes: {names}")
    weights = {
        "features": list(FEATURES),
        "vetoes": names,
        "mean": [round(float(v), 6) for v in model.scaler.mean_],
        "scale": [round(float(v), 6) for v in model.scaler.scale_],
        "coef": [round(float(v), 6) for v in model.coef],
        "intercept": round(float(model.intercept), 6),
        "threshold": round(best["threshold"], 6),
        "cosine_floor": args.floor,
        "fitted": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pairs": len(pairs),
            "target_precision": args.target_precision,
            "C": best["C"],
            "tried": tried,
            "command": "python benchmarks/train_semantic_verifier.py " + " ".join(argv or sys.argv[1:]),
        },
    }
    args.out.write_text(json.dumps(weights, indent=1) + "\n")
    for name, coef in sorted(zip(FEATURES, weights["coef"], strict=True), key=lambda r: -abs(r[1])):
        print(f"  {name:20s} {coef:+.3f}")
    print(f"wrote {args.out}: C={best['C']}, threshold {weights['threshold']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
