"""Text normalisation shared by everything that compares texts by their words.

The semantic cache's lexical check (router/semantic_match.py) and the online groundedness monitor
(eval/groundedness.py) both reduce a text to its content words: casing, punctuation, contractions,
filler and inflection folded away, numbers canonical (digits or words, thousands separators, clock
times, currency and percent signs). It lives outside both packages so neither imports the other.

Why a hand-written stemmer and number parser: the online groundedness monitor and the older lexical
guard were tuned with this fold, and a unit test pins it. The semantic cache's verifier
(router/question_frame.py) takes lemmas from lemminflect and the Snowball stemmer instead, and keeps this
module's number reading: word2number reads spelled numbers but not clock times, currency, ordinals or
thousands separators, which questions are full of.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation


def words(text: str) -> list[str]:
    """Word lists below are written as prose-like blocks, easier to review than quoted lists."""
    return text.split()


# Words that frame a request without changing it. Deliberately absent (they change the answer): negations,
# why/when/where/who, should/must, comparatives and prepositions of time/quantity/direction, numbers.
FILLER_WORDS: frozenset[str] = frozenset(
    words("""
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
    words("""
    not no never without nor none nothing nobody
    after before within under over more less than since until till between per each every from
    why when where who whom whose should must
    up down out off
    """)
)

_UNITS = {
    w: i
    for i, w in enumerate(
        words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen"
        )
    )
}
_TENS = {w: 10 * i for i, w in enumerate(words("twenty thirty forty fifty sixty seventy eighty ninety"), start=2)}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
# "second" is left out: it is far more often the unit of time than the ordinal.
_ORDINAL_WORDS = {
    w: i
    for i, w in enumerate(
        words(
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
CHUNK = re.compile(r"[a-z0-9]+(?:[.:][0-9]+)*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_ORDINAL = re.compile(r"(\d+)(?:st|nd|rd|th)")
_VOWELS = frozenset("aeiou")


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


FILLER_STEMS = frozenset(stem(w) for w in FILLER_WORDS) - {stem(w) for w in MEANINGFUL_WORDS}


def _canonical_number(text: str) -> str:
    try:
        value = Decimal(text).normalize()
    except InvalidOperation:
        return text
    return format(value, "f")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def normalise(text: str) -> str:
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


def tokens(text: str) -> list[str]:
    """Chunks of letters/digits; spelled numbers are folded into digits here, before any word is dropped."""
    out: list[str] = []
    run: list[int] = []  # [total, current] of a spelled number being read

    def flush() -> None:
        if run:
            out.append(str(run[0] + run[1]))
            run.clear()

    for chunk in CHUNK.findall(normalise(text)):
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
    return [s for s in (stem(t) for t in tokens(text)) if s not in FILLER_STEMS]


def number_of(token: str) -> str | None:
    """The canonical spelling of a numeric token (count, decimal, clock time, ordinal), else None."""
    if _NUMBER.fullmatch(token):
        return _canonical_number(token)
    if m := _CLOCK.fullmatch(token):
        return f"{int(m.group(1)):02d}:{m.group(2)}"
    if m := _ORDINAL.fullmatch(token):
        return _ordinal(int(m.group(1)))
    return None
