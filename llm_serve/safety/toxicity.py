"""Toxicity score from alt-profanity-check: a linear SVM over character and word n-grams, calibrated to a
probability, trained on about 200k human-labelled texts and shipped inside its wheel.

Chosen over a transformer classifier (Detoxify, unitary/toxic-bert) because it needs no model hub, scores
a sentence in well under a millisecond on one core, and so can run on every request a guardrail checks
without a GPU or a second model server; what it misses (sarcasm, toxicity without abusive words) is
measured in benchmarks/results/toxicity.json. The model is loaded on first use (~1 s, scikit-learn).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence


@functools.cache
def _predict_prob() -> Callable[[Sequence[str]], Sequence[float]]:
    from profanity_check import predict_prob

    return predict_prob


def toxicity_scores(texts: Sequence[str]) -> list[float]:
    """Probability in [0, 1] that each text is toxic (offensive, abusive, profane); empty text scores 0."""
    if not texts:
        return []
    predict = _predict_prob()
    probs = predict([t or "" for t in texts])
    return [0.0 if not t.strip() else round(float(p), 6) for t, p in zip(texts, probs, strict=True)]


def toxicity(text: str) -> float:
    return toxicity_scores([text])[0]
