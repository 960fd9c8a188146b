"""Toxicity score from alt-profanity-check: a linear SVM over TF-IDF word features, calibrated to a
probability, trained on about 200k human-labelled texts and shipped inside its wheel.

Chosen over a transformer classifier (Detoxify, unitary/toxic-bert) because it needs no model hub and
no GPU and is cheap enough to run on every request a guardrail checks; what it misses (threats and
insults without abusive words) is measured in benchmarks/results/toxicity.json.

`ToxicityScorer` computes what the package's `predict_prob` computes (a test holds them equal to 1e-9),
but not through it: `CalibratedClassifierCV.predict_proba` walks its five calibrated folds one by one
through scikit-learn's input validation, and `TfidfVectorizer.transform` validates and builds a sparse
matrix, together ~2 ms for one text on this machine; a streamed answer is re-checked every few dozen
characters, so that is what a guardrail would add. Here the package's own analyzer (scikit-learn's
tokenizer and stop words, from `build_analyzer`) turns the text into terms, and the TF-IDF weighting
with its l2 norm, the five SVM margins and their fitted sigmoids are a few NumPy operations on the
text's own terms (~30 us). The fitted parameters are used as they are; nothing is re-trained, and a
vectorizer configured otherwise than this arithmetic assumes is refused at load.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

# The TfidfVectorizer settings the arithmetic in `ToxicityScorer._margins` reproduces.
EXPECTED_VECTORIZER = {"binary": False, "norm": "l2", "use_idf": True, "sublinear_tf": False}


class ToxicityScorer:
    def __init__(self) -> None:
        import numpy as np
        from profanity_check import profanity_check as package

        model, vectorizer = package.model, package.vectorizer
        folds = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1] or any(c.method != "sigmoid" for c in folds):
            raise RuntimeError("alt-profanity-check's model is not the binary sigmoid-calibrated SVM this expects")
        params = vectorizer.get_params()
        if any(params.get(k) != v for k, v in EXPECTED_VECTORIZER.items()):
            raise RuntimeError(f"alt-profanity-check's vectorizer is not configured as {EXPECTED_VECTORIZER}")
        self._np = np
        self._analyze = vectorizer.build_analyzer()
        self._vocabulary: dict[str, int] = vectorizer.vocabulary_
        self._idf = vectorizer.idf_
        self._weights = np.stack([f.estimator.coef_.ravel() for f in folds], axis=1)  # features x folds
        self._bias = np.array([f.estimator.intercept_[0] for f in folds])
        self._a = np.array([f.calibrators[0].a_ for f in folds])
        self._b = np.array([f.calibrators[0].b_ for f in folds])

    def _margins(self, text: str) -> Any:
        """The five folds' SVM margins for one text: TF-IDF (raw counts times idf, l2-normalised) dot weights."""
        np = self._np
        counts: dict[int, int] = {}
        for term in self._analyze(text):
            column = self._vocabulary.get(term)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if not counts:
            return self._bias
        columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        weights = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * self._idf[columns]
        weights /= np.sqrt(weights @ weights)
        return weights @ self._weights[columns] + self._bias

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Probability in [0, 1] that each text is toxic (offensive, abusive, profane); empty text scores 0."""
        np = self._np
        out = []
        for text in texts:
            if not text or not text.strip():
                out.append(0.0)
                continue
            margins = self._margins(text)
            probs = 1.0 / (1.0 + np.exp(self._a * margins + self._b))  # each fold's sigmoid calibration
            out.append(round(float(probs.mean()), 6))
        return out


@functools.cache
def scorer() -> ToxicityScorer:
    """One per process, loaded on first use (~1 s: the pickled vectorizer's vocabulary)."""
    return ToxicityScorer()


def toxicity_scores(texts: Sequence[str]) -> list[float]:
    return scorer().scores(texts)


def toxicity(text: str) -> float:
    return scorer().scores([text])[0]
