"""A lexical second check for semantic-cache hits: serve a stored answer only when the questions agree word for word.

Why: all-MiniLM-L6-v2 puts near misses as close as paraphrases, often closer. Measured here, "refund after 30
days" / "refund within 30 days" score 0.984 and "opening hours on Saturday" / "... on Sunday" 0.956, while the true
paraphrase "support phone number" / "which number should I call for support" scores 0.77; no cosine threshold
alone gave precision above ~0.6 (benchmarks/semantic_precision.py). A cache hit that answers a different
question is far worse than a miss, so a candidate that passed the cosine threshold is only served when
`same_question` also holds, and this check is built to say no whenever it is unsure.

What it accepts (variants that cannot change the request):

- casing, punctuation and spacing; contractions ("what's", "don't", "can't" -> "can not");
- filler and framing words: articles, auxiliaries (do/does/did/can/could/would/will/is/are/...), pronouns,
  politeness (please, thanks, hi), "how"/"what"/"which", "tell me", "I want/need/would like to", "is there a
  way to", and the like (`FILLER_WORDS`);
- word order (terms are compared as a set), except that relational words bind the term after them (below);
- inflection, through a light deterministic suffix stemmer: plural -s/-es/-ies, -ing, -ed;
- numbers written as digits or words ("twenty five" = "25"), thousands separators ("1,000" = "1000"),
  trailing zeros ("3.50" = "3.5"), times ("9pm" = "9 p.m." = "21:00"), "$" / "%" spelled out;
- synonyms, only those configured (`synonyms`, single words; none by default).

What it rejects by design (both questions must reduce to the same content terms and the same numbers):

- any content word substituted, added or dropped: "cancel my subscription" / "cancel my order", "opening
  hours" / "opening hours on holidays", "iOS" / "Android", "Saturday" / "Sunday";
- any number changed: "17 times 23" / "17 times 24", "per month" / "per year" is a word change;
- negation flips ("not", "no", "never", "without" are kept), why/when/where/who versus one another or versus
  how/what, should/must versus can;
- comparatives, prepositions of time, quantity and direction ("after"/"within"/"before", "more"/"less",
  "over"/"under", "per", "from"/"to"), which are kept and bound to the term they govern, so "from London to
  Paris" and "from Paris to London" differ although their words are the same set;
- genuine paraphrases that use different content words ("support phone number" / "which number should I call
  for support"): they are cache misses, the price of never answering the wrong question. Configured synonyms
  win some of them back.

Known blind spots (the guard can only be as strict as its word lists): tense is not seen ("was I charged" and
"will I be charged" both reduce to "charged"); neither are role reversals that no relational word marks ("does
plan A include B" / "does B include plan A"); and the crude stemmer folds a few unrelated words together ("plane"
and "plan"), which only matters when everything else in the two questions agrees. Both sides must also have at
least one content term: two questions made only of filler never match.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from llm_serve.textnorm import (
    CHUNK,
    FILLER_STEMS,
    FILLER_WORDS,
    MEANINGFUL_WORDS,
    normalise,
    number_of,
    stem,
    tokens,
    words,
)

__all__ = ["FILLER_WORDS", "MEANINGFUL_WORDS", "QuestionTerms", "question_terms", "same_question", "stem"]

# Words that govern the term after them: bound as "word:term" so that order inside the relation counts.
_RELATIONS: frozenset[str] = frozenset(
    words("after before within under over since until till than per from minus divided between")
)
# "to" is usually framing ("how to", "want to"); after a content term it is directional ("switch plan to annual").
_DIRECTIONAL_TO = frozenset(words("to into onto"))

_PRONOUNS = frozenset(words("i we you he she they it"))


class QuestionTerms(NamedTuple):
    """What a question reduces to: its content terms (numbers included) and, separately, its numbers."""

    terms: frozenset[str]
    numbers: tuple[str, ...]


@lru_cache(maxsize=64)
def _synonym_map(groups: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for group in groups:
        stems = []
        for member in group:
            words = CHUNK.findall(normalise(member))
            if len(words) != 1:
                raise ValueError(f"synonym {member!r} must be a single word")
            stems.append(stem(words[0]))
        for s in stems:
            mapping[s] = stems[0]
    return mapping


def _freeze(synonyms: Iterable[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(group) for group in synonyms)


@lru_cache(maxsize=4096)
def _question_terms(text: str, groups: tuple[tuple[str, ...], ...]) -> QuestionTerms:
    synonyms = _synonym_map(groups)
    raw = tokens(text)
    # Pass 1: classify each token as filler, a relation ("rel"), a number ("num") or a content term ("term").
    kinds: list[tuple[str, str]] = []
    for i, token in enumerate(raw):
        if (number := number_of(token)) is not None:
            kinds.append(("num", number))
        elif not token.isalpha():  # model names and codes: e7, 4k, s23
            kinds.append(("term", token))
        elif (stemmed := stem(token)) in synonyms:
            kinds.append(("term", synonyms[stemmed]))
        elif token == "may":  # the modal is framing, the month is not
            near = {raw[i - 1] if i else "", raw[i + 1] if i + 1 < len(raw) else ""}
            kinds.append(("filler", token) if near & _PRONOUNS else ("term", "may"))
        elif token in _RELATIONS:
            kinds.append(("rel", token))
        elif token in _DIRECTIONAL_TO:
            # "log in to" and "log into" both bind: look back past a particle to the word "to" follows.
            back = [kind for (kind, _), word in zip(kinds, raw, strict=False) if word not in ("in", "on")]
            kinds.append(("rel", "to") if back and back[-1] in ("term", "num") else ("filler", token))
        elif token in MEANINGFUL_WORDS:
            kinds.append(("term", "who" if token == "whom" else token))
        elif token in FILLER_WORDS or stemmed in FILLER_STEMS:
            kinds.append(("filler", token))
        else:
            # A stem that lands on a kept function word ("note" -> "not") keeps its surface form instead.
            kinds.append(("term", token if stemmed in MEANINGFUL_WORDS else stemmed))
    numbers = tuple(sorted(value for kind, value in kinds if kind == "num"))
    # Pass 2: a number takes the word right after it, so "15 percent of 200" is not "200 percent of 15".
    units: list[tuple[str, str]] = []
    for kind, value in kinds:
        if kind == "term" and units and units[-1][0] == "num" and value.isalpha():
            units[-1] = ("term", f"{units[-1][1]} {value}")
        else:
            units.append((kind, value))
    # Pass 3: a relation takes the next content term (skipping filler, not crossing another relation).
    terms: set[str] = set()
    i = 0
    while i < len(units):
        kind, value = units[i]
        if kind in ("term", "num"):
            terms.add(value)
        elif kind == "rel":
            j = i + 1
            while j < len(units) and units[j][0] == "filler":
                j += 1
            if j < len(units) and units[j][0] in ("term", "num"):
                terms.add(f"{value}:{units[j][1]}")
                i = j
            else:
                terms.add(value)
        i += 1
    return QuestionTerms(frozenset(terms), numbers)


def question_terms(text: str, synonyms: Iterable[Sequence[str]] = ()) -> QuestionTerms:
    """Reduce a question to what `same_question` compares; exposed so tests and reports can show why."""
    return _question_terms(text, _freeze(synonyms))


def same_question(a: str, b: str, synonyms: Iterable[Sequence[str]] = ()) -> bool:
    """True only when `a` and `b` ask for the same thing by the rules in the module docstring.

    Meant for candidates that already passed the cosine threshold: it cannot find paraphrases, only veto
    near misses. Questions without any content term never match (nothing to vouch for).
    """
    groups = _freeze(synonyms)
    ta, tb = _question_terms(a, groups), _question_terms(b, groups)
    return bool(ta.terms) and ta.terms == tb.terms and ta.numbers == tb.numbers
