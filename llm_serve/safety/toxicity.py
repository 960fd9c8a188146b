"""Toxicity score from alt-profanity-check: a linear SVM over TF-IDF word features, calibrated to a
probability, trained on about 200k human-labelled texts and shipped inside its wheel.

Chosen over a transformer classifier (Detoxify, unitary/toxic-bert) because it needs no model hub and
no GPU and is cheap enough to run on every request a guardrail checks; what it misses (threats and
insults without abusive words) is measured in benchmarks/results/toxicity.json.

`ToxicityScorer` computes exactly what the package's `predict_prob` computes (a test holds them equal),
but not through it: `CalibratedClassifierCV.predict_proba` walks its five calibrated folds one by one
through scikit-learn's input validation and costs ~2 ms a call on this machine, while the same
arithmetic as one sparse product (five SVM margins at once, each through its fitted sigmoid, then
their mean) costs ~0.25 ms, which is what lets a guardrail stay within a few ms of p50. The package's
own vectorizer and fitted parameters are used as they are; nothing is re-trained.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


class ToxicityScorer:
    def __init__(self) -> None:
        import numpy as np
        from profanity_check import profanity_check as package

        model = package.model
        folds = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1] or any(c.method != "sigmoid" for c in folds):
            raise RuntimeError("alt-profanity-check's model is not the binary sigmoid-calibrated SVM this expects")
        self._vectorizer = package.vectorizer
        self._weights = np.stack([f.estimator.coef_.ravel() for f in folds], axis=1)  # features x folds
        self._bias = np.array([f.estimator.intercept_[0] for f in folds])
        self._a = np.array([f.calibrators[0].a_ for f in folds])
        self._b = np.array([f.calibrators[0].b_ for f in folds])

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Probability in [0, 1] that each text is toxic (offensive, abusive, profane); empty text scores 0."""
        if not texts:
            return []
        from scipy.special import expit

        features: Any = self._vectorizer.transform([t or "" for t in texts])
        margins = features @ self._weights + self._bias
        probs = expit(-(self._a * margins + self._b)).mean(axis=1)
        return [0.0 if not t.strip() else round(float(p), 6) for t, p in zip(texts, probs, strict=True)]


@functools.cache
def scorer() -> ToxicityScorer:
    """One per process, loaded on first use (~1 s: the pickled vectorizer's vocabulary)."""
    return ToxicityScorer()


def toxicity_scores(texts: Sequence[str]) -> list[float]:
    return scorer().scores(texts)


def toxicity(text: str) -> float:
    return scorer().scores([text])[0]
