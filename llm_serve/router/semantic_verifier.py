"""The semantic cache's verifier: is a candidate that the embedding found close really the same question?

Why a learned verifier and not more word lists: the word-for-word guard (semantic_match.py) could only say
yes when two questions had the same content words, so natural paraphrases missed (recall 0.07 on unseen
questions), and its blind spots (tense, who the question is about, swapped roles) let near misses through.
Here two question frames (question_frame.py) are compared into a few dozen features: the cosine, how many
content lemmas differ, and whether tense, obligation, negation, persons, numbers, relations, particles,
scope, degree, question word or names differ. The contradictions that the tuning split shows to be
decisive (rare on paraphrases, common on near misses) veto a candidate outright; a logistic regression
fitted on the tuning split of benchmarks/data/semantic_cache_eval/ weighs the rest. Vetoes and weights ship
in semantic_verifier.json; `python benchmarks/train_semantic_verifier.py` re-fits them, and they are judged
only on the held-out split (benchmarks/semantic_precision.py). Logistic regression, because its weights can
be read and its score is a probability a deployment can set a threshold on (`llm-serve cache calibrate`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm_serve.router.question_frame import Frame, frame, lemma

WEIGHTS = Path(__file__).with_name("semantic_verifier.json")


def _kendall(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of shared-lemma pairs whose order flips between the two questions (roles swapped)."""
    shared = [w for w in dict.fromkeys(a) if w in set(b)]
    if len(shared) < 2:
        return 0.0
    pos_b = {w: b.index(w) for w in shared}
    pos_a = {w: a.index(w) for w in shared}
    pairs = flips = 0
    for i, x in enumerate(shared):
        for y in shared[i + 1 :]:
            pairs += 1
            flips += (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) < 0
    return flips / pairs


def _conflict(a: frozenset[str], b: frozenset[str]) -> float:
    """Both questions say it, and say it differently: one side's silence is not a contradiction ("How do
    I ..." against "Is there a way to ..." has a subject only on one side)."""
    return float(bool(a) and bool(b) and a != b)


def _bound(pairs: frozenset[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in pairs:
        head, _, tail = item.partition(":")
        out.setdefault(head, set()).add(tail)
    return out


def _relations_conflict(a: frozenset[str], b: frozenset[str]) -> float:
    """The same term under another relation ("after 30 days" / "within 30 days", "over $50" / "under $50").
    Another term under the same relation ("to Canada" / "to Mexico") is left to the content and name
    features: paraphrases often bind another word ("log in to my account" / "sign into my profile")."""
    ra, rb = _bound(a), _bound(b)
    ta = {t: w for w, ts in ra.items() for t in ts}
    tb = {t: w for w, ts in rb.items() for t in ts}
    return float(any(ta[t] != tb[t] for t in ta.keys() & tb.keys()))


def _particles_conflict(a: frozenset[str], b: frozenset[str]) -> float:
    """One verb with another particle: "log in" / "log out", "turn on" / "turn off"."""
    pa, pb = _bound(a), _bound(b)
    return float(any(pa[v] != pb[v] for v in pa.keys() & pb.keys()))


TYPO_SIMILARITY = 0.8  # rapidfuzz normalised Indel similarity: "chnage" / "change" 0.83, "Saturday" / "Sunday" 0.71


def _mentions(f: Frame, name: str) -> bool:
    """Written out anywhere, in any casing or spacing ("Fridays" mentions Friday); no fuzzier than that,
    since "Austria" is one letter pair from "Australia"."""
    return name in f.compact


def _names_missing(fa: Frame, fb: Frame) -> float:
    """A name on one side that the other never mentions: Saturday / Sunday, iOS / Android; "Wi-Fi" / "wifi"
    and "9am" / "9 a.m." are mentions."""
    return float(any(not _mentions(fb, n) for n in fa.names) or any(not _mentions(fa, n) for n in fb.names))


def _swapped(a: Sequence[str], b: Sequence[str]) -> float:
    """Two parts trade places around a part that stays: "30 Celsius in Fahrenheit" / "30 Fahrenheit in
    Celsius", "a refund instead of store credit" / "store credit instead of a refund". Moving one phrase
    ("In Fahrenheit, what is ...") has nothing that stays between, so it is not a swap."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    ma, mb = list(a[start : len(a) - end]), list(b[start : len(b) - end])
    if len(ma) != len(mb) or len(ma) < 3:
        return 0.0
    for lx in range(1, len(ma) - 1):
        for ly in range(1, len(ma) - lx):
            x, q, y = ma[:lx], ma[lx : len(ma) - ly], ma[len(ma) - ly :]
            if x != y and mb == y + q + x:
                return 1.0
    return 0.0


def _single_edit(fa: Frame, fb: Frame) -> tuple[float, float, float]:
    """(function word replaced, content word replaced, one word added): the questions' token sequences
    differ in that one place only. The near misses people meet are edits this small ("over" / "under",
    "Saturday" / "Sunday", "Pro" added), while rewording changes several places; a replaced word within
    typo distance of the other is neither."""
    from rapidfuzz.distance import Indel

    a, b = fa.sequence, fb.sequence
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) != 1:
            return 0.0, 0.0, 0.0
        x, y = a[diff[0]], b[diff[0]]
        tx, ty = fa.tokens[diff[0]], fb.tokens[diff[0]]
        if len(tx) > 3 and Indel.normalized_similarity(tx, ty) >= TYPO_SIMILARITY:
            return 0.0, 0.0, 0.0
        content = x in fa.lemmas or y in fb.lemmas
        return float(not content), float(content), 0.0
    short, long = (a, b) if len(a) < len(b) else (b, a)
    if len(long) - len(short) == 1 and any(long[:i] + long[i + 1 :] == short for i in range(len(long))):
        return 0.0, 0.0, 1.0
    return 0.0, 0.0, 0.0


def _values(f: Frame) -> list[str]:
    """The numbers' values; "1" is left out because "a kilogram" and "one kilogram" are one question."""
    return sorted(v for v in (n.split()[0] for n in f.numbers) if v != "1")


COMPOUND_MIN = 5  # "logout" / "log out", "backup" / "back up", "payday" / "pay day"


def _unmatched(fa: Frame, fb: Frame) -> tuple[set[str], set[str]]:
    """Content lemmas left on each side once typos ("reservaton"), compounds written as one word ("login")
    and their parts are paired up. Typos are compared on the words as typed, since a stem of a typo is no
    stem at all; the similarity is rapidfuzz's normalised Indel (TYPO_SIMILARITY)."""
    from rapidfuzz.distance import Indel

    la, lb = set(fa.lemmas), set(fb.lemmas)
    typed_a = dict(zip(fa.lemmas, fa.surface, strict=True))
    typed_b = dict(zip(fb.lemmas, fb.surface, strict=True))
    only_a, only_b = la - lb, lb - la
    for word in sorted(only_a):
        typed = typed_a[word]
        if typed in fa.names:  # names are compared exactly (see _mentions)
            continue
        match = next(
            (
                w
                for w in sorted(only_b)
                if len(typed) > 3
                and typed_b[w] not in fb.names
                and Indel.normalized_similarity(typed, typed_b[w]) >= TYPO_SIMILARITY
            ),
            None,
        )
        if match is not None:
            only_a.discard(word)
            only_b.discard(match)
    for mine, theirs, typed, other in ((only_a, only_b, typed_a, fb), (only_b, only_a, typed_b, fa)):
        for word in sorted(mine):
            if len(typed[word]) >= COMPOUND_MIN and typed[word] in other.compact:
                mine.discard(word)
                for part in sorted(theirs):
                    if part in typed[word]:
                        theirs.discard(part)
    return only_a, only_b


FEATURES: tuple[str, ...] = (
    "cosine",
    "cosine_sq",
    "jaccard",
    "only_fewer",
    "only_more",
    "one_swap",
    "qualifier_added",
    "no_content_change",
    "numbers_differ",
    "relations_conflict",
    "negation_differs",
    "tense_differs",
    "obligation_differs",
    "persons_conflict",
    "subject_conflict",
    "particles_conflict",
    "scope_differs",
    "degree_differs",
    "wh_differs",
    "names_missing",
    "order_flips",
    "swapped",
    "function_word_replaced",
    "content_word_replaced",
    "word_added",
    "clean_match",
    "empty",
)


# What `clean_match` requires to be absent: every difference that changes an answer. Persons and subjects
# are left out: "I was wondering whether you ..." names a "you" that the plain question does not.
CONTRADICTIONS = (
    "numbers_differ",
    "relations_conflict",
    "negation_differs",
    "tense_differs",
    "obligation_differs",
    "particles_conflict",
    "scope_differs",
    "degree_differs",
    "wh_differs",
    "names_missing",
    "swapped",
    "function_word_replaced",
    "content_word_replaced",
    "word_added",
)


def features(fa: Frame, fb: Frame, cosine: float) -> list[float]:
    """Symmetric in a and b: counts of unmatched lemmas are given as (fewer side, more side)."""
    la, lb = set(fa.lemmas), set(fb.lemmas)
    only_a, only_b = _unmatched(fa, fb)
    union = la | lb
    fewer, more = sorted((len(only_a), len(only_b)))
    out = [
        cosine,
        cosine * cosine,
        (len(union) - len(only_a) - len(only_b)) / len(union) if union else 0.0,
        float(fewer),
        float(more),
        float(fewer == more == 1),
        float(fewer == 0 and more > 0),
        float(not only_a and not only_b),
        float(_values(fa) != _values(fb)),
        _relations_conflict(fa.relations, fb.relations),
        float(fa.negated != fb.negated),
        float(fa.past != fb.past),
        float(fa.obligation != fb.obligation),
        _conflict(fa.persons, fb.persons),
        float(fa.subject is not None and fb.subject is not None and fa.subject != fb.subject),
        _particles_conflict(fa.particles, fb.particles),
        float(fa.scope != fb.scope),
        float(fa.degree != fb.degree),
        float(fa.wh != fb.wh),
        _names_missing(fa, fb),
        _kendall(fa.lemmas, fb.lemmas),
        _swapped(fa.sequence, fb.sequence),
        *_single_edit(fa, fb),
        0.0,  # clean_match, below
        float(not la or not lb),
    ]
    # Nothing differs but the wording of filler: the case a cosine dented by typos should not veto.
    flags = [out[FEATURES.index(name)] for name in CONTRADICTIONS]
    out[FEATURES.index("clean_match")] = float(not only_a and not only_b and not any(flags))
    return out


@lru_cache(maxsize=64)
def _synonym_map(groups: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for group in groups:
        if any(len(member.split()) != 1 for member in group):
            raise ValueError(f"synonyms must be single words: {list(group)}")
        lemmas = [lemma(member.lower()) for member in group]
        for word in lemmas:
            mapping[word] = lemmas[0]
    return mapping


class Verifier:
    """Scores a pair of questions with the shipped (or a given) logistic model; `accepts` applies the threshold."""

    def __init__(self, model: dict[str, Any] | None = None, threshold: float | None = None) -> None:
        model = model if model is not None else load_model()
        if list(model["features"]) != list(FEATURES):
            raise ValueError("verifier weights were fitted on other features; re-run train_semantic_verifier.py")
        self.mean = [float(x) for x in model["mean"]]
        self.scale = [float(x) or 1.0 for x in model["scale"]]
        self.coef = [float(x) for x in model["coef"]]
        self.intercept = float(model["intercept"])
        self.vetoes = [FEATURES.index(name) for name in model.get("vetoes", [])]
        self.threshold = float(model["threshold"] if threshold is None else threshold)
        self.score("How do I start?", "How can I start?", 0.9)  # lemminflect loads its tables on first use

    def score(self, a: str, b: str, cosine: float, synonyms: Iterable[Sequence[str]] = ()) -> float:
        mapping = _synonym_map(tuple(tuple(g) for g in synonyms))
        x = features(frame(a, mapping), frame(b, mapping), cosine)
        if any(x[i] for i in self.vetoes):
            return 0.0
        z = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale, strict=True)
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def accepts(self, a: str, b: str, cosine: float, synonyms: Iterable[Sequence[str]] = ()) -> bool:
        return self.score(a, b, cosine, synonyms) >= self.threshold


@lru_cache(maxsize=1)
def load_model(path: Path = WEIGHTS) -> dict[str, Any]:
    return json.loads(path.read_text())
