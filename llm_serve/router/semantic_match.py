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

import re
import unicodedata
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import NamedTuple


def _words(text: str) -> list[str]:
    """Word lists below are written as prose-like blocks, easier to review than quoted lists."""
    return text.split()


# Words that frame a request without changing it. Deliberately absent (they change the answer): negations,
# why/when/where/who, should/must, comparatives and prepositions of time/quantity/direction, numbers.
FILLER_WORDS: frozenset[str] = frozenset(
    _words("""
    a an the
    do does did doing can could would will shall may might am is are was were be been being have has had having
    please kindly thanks thank hi hello hey sorry ok okay dear
    i me my mine myself you your yours yourself we us our ours it its itself they them their theirs he him his
    she her hers this that these those
    how what which
    tell know want wanted wanting wondering wonder curious need like help explain ask let say find see
    way able possible allowed go going process procedure step
    there here some any anything something
    to of for in on at with about regarding by as into onto
    and or but if so then just really actually also currently exactly basically still even ever now right
    much many question
    """)
)

# Kept as content even though they look like function words; documented here so the lists cannot drift into
# each other (a unit test checks they are disjoint).
MEANINGFUL_WORDS: frozenset[str] = frozenset(
    _words("""
    not no never without nor none nothing nobody
    after before within under over more less than since until till between per each every from
    why when where who whom whose should must
    up down out off
    """)
)

# Words that govern the term after them: bound as "word:term" so that order inside the relation counts.
_RELATIONS: frozenset[str] = frozenset(
    _words("after before within under over since until till than per from minus divided between")
)
# "to" is usually framing ("how to", "want to"); after a content term it is directional ("switch plan to annual").
_DIRECTIONAL_TO = frozenset(_words("to into onto"))

_UNITS = {
    w: i
    for i, w in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen"
        )
    )
}
_TENS = {w: 10 * i for i, w in enumerate(_words("twenty thirty forty fifty sixty seventy eighty ninety"), start=2)}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
# "second" is left out: it is far more often the unit of time than the ordinal.
_ORDINAL_WORDS = {
    w: i
    for i, w in enumerate(
        _words(
            "first _ third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth fourteenth "
            "fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
        ),
        start=1,
    )
    if w != "_"
}
_SYMBOLS = {"$": " dollar ", "€": " euro ", "£": " pound ", "¥": " yen ", "%": " percent ", "&": " and ", "@": " at "}
_CONTRACTIONS = (
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bgonna\b"), "going to"),
    (re.compile(r"\bwanna\b"), "want to"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'re\b"), " are"),
    (re.compile(r"'ve\b"), " have"),
    (re.compile(r"'ll\b"), " will"),
    (re.compile(r"'d\b"), " would"),
    (re.compile(r"'m\b"), " am"),
    # what's/it's/there's -> "is"; a possessive ("company's") also becomes "is", which is filler either way.
    (re.compile(r"'s\b"), " is"),
    (re.compile(r"s'(?=\s|$)"), "s"),
)
_US = re.compile(r"\bU\.?S\.?(?:A\.?)?(?![\w.])")  # the country, before lowercasing makes it the pronoun
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?\s?m\b\.?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CURRENCY = re.compile(r"([$€£¥])\s*(\d+(?:\.\d+)?)")
_PLUS = re.compile(r"(?<=\d)\s*\+\s*(?=\d)")
_CHUNK = re.compile(r"[a-z0-9]+(?:[.:][0-9]+)*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th)")
_PRONOUNS = frozenset(_words("i we you he she they it"))
_VOWELS = frozenset("aeiou")


class QuestionTerms(NamedTuple):
    """What a question reduces to: its content terms (numbers included) and, separately, its numbers."""

    terms: frozenset[str]
    numbers: tuple[str, ...]


def stem(word: str) -> str:
    """Fold inflections onto one form; deliberately crude but deterministic, so both sides fold the same way.

    Strips one plural (-s/-es/-ies) then one -ing/-ed, then a final -e, a doubled final consonant and turns
    a final -y into -i, so charge/charges/charged/charging, ship/shipped/shipping and apply/applies/applied all
    meet. Words of three letters or fewer are left alone.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    w = word
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("es") and w[:-2].endswith(("ss", "sh", "ch", "x", "z")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and not w.endswith("eed"):
            base = w[: -len(suffix)]
            if len(base) >= 3:
                w = base
            elif _VOWELS & set(base):  # using -> use, used -> use; thing and shed stay
                w = base + "e"
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in _VOWELS:
        w = w[:-1]
    if len(w) > 3 and w.endswith("y"):
        w = w[:-1] + "i"
    return w


_FILLER_STEMS = frozenset(stem(w) for w in FILLER_WORDS) - {stem(w) for w in MEANINGFUL_WORDS}


def _canonical_number(text: str) -> str:
    try:
        value = Decimal(text).normalize()
    except InvalidOperation:
        return text
    return format(value, "f")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    text = _US.sub(" usa ", text).lower()
    for pattern, repl in _CONTRACTIONS:
        text = pattern.sub(repl, text)
    text = _THOUSANDS.sub("", text)
    text = _PLUS.sub(" plus ", text)

    def clock(m: re.Match[str]) -> str:
        hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
        if m.group(3) == "p":
            hour += 12
        return f" {hour:02d}:{minute:02d} "

    text = _TIME.sub(clock, text)
    text = _CURRENCY.sub(lambda m: f" {m.group(2)} {_SYMBOLS[m.group(1)]} ", text)  # "$50" reads "50 dollar"
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    return text


def _tokens(text: str) -> list[str]:
    """Chunks of letters/digits; spelled numbers are folded into digits here, before any word is dropped."""
    out: list[str] = []
    run: list[int] = []  # [total, current] of a spelled number being read

    def flush() -> None:
        if run:
            out.append(str(run[0] + run[1]))
            run.clear()

    for chunk in _CHUNK.findall(_normalise_text(text)):
        if chunk in _UNITS or chunk in _TENS:
            value = _UNITS.get(chunk, _TENS.get(chunk, 0))
            if run:
                current = run[1]
                joins = (current % 100 == 0 and (current or run[0])) or (
                    chunk in _UNITS and value < 10 and current % 10 == 0 and current % 100 >= 20
                )
                if not joins:
                    flush()
            if not run:
                run.extend([0, 0])
            run[1] += value
            continue
        if chunk in _SCALES and run:
            scale = _SCALES[chunk]
            if scale == 100:
                run[1] = (run[1] or 1) * 100
            else:
                run[0] += (run[1] or 1) * scale
                run[1] = 0
            continue
        if chunk == "and" and run:
            continue  # "one hundred and five"
        flush()
        if chunk in _SCALES:  # "hundred" alone, e.g. "a hundred"
            out.append(str(_SCALES[chunk]))
        elif chunk in _ORDINAL_WORDS:
            out.append(_ordinal(_ORDINAL_WORDS[chunk]))
        else:
            out.append(chunk)
    flush()
    return out


def content_stems(text: str) -> list[str]:
    """The text's content words, stemmed and with filler dropped, in order: the unit both the cache's
    lexical check and the online groundedness monitor compare texts by."""
    return [s for s in (stem(t) for t in _tokens(text)) if s not in _FILLER_STEMS]


def _number(token: str) -> str | None:
    """The canonical spelling of a numeric token (count, decimal, clock time, ordinal), else None."""
    if _NUMBER.fullmatch(token):
        return _canonical_number(token)
    if m := _CLOCK.fullmatch(token):
        return f"{int(m.group(1)):02d}:{m.group(2)}"
    if m := _ORDINAL.fullmatch(token):
        return _ordinal(int(m.group(1)))
    return None


@lru_cache(maxsize=64)
def _synonym_map(groups: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for group in groups:
        stems = []
        for member in group:
            words = _CHUNK.findall(_normalise_text(member))
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
    raw = _tokens(text)
    # Pass 1: classify each token as filler, a relation ("rel"), a number ("num") or a content term ("term").
    kinds: list[tuple[str, str]] = []
    for i, token in enumerate(raw):
        if (number := _number(token)) is not None:
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
        elif token in FILLER_WORDS or stemmed in _FILLER_STEMS:
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
