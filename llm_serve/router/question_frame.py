"""A question reduced to the parts that decide its answer: content lemmas, and the grammar embeddings blur.

Why: all-MiniLM-L6-v2 scores "was I charged twice?" and "will I be charged twice?" at 0.9 and more, while
true paraphrases with other words ("support phone number" / "which number do I call for support") score
0.75. The word-for-word guard of semantic_match.py answered that by refusing every change of content word,
which made the cache almost never hit on natural paraphrases (recall 0.07 on questions it was not written
on). A frame instead keeps content words as lemmas (`lemminflect`, then the Snowball stemmer, so that
"cancellation" and "cancel", "paid" and "pay" meet) and, beside them, the few grammatical facts that flip an
answer while barely moving the embedding: tense (past or not), obligation (can vs must), negation, who the
question is about, the numbers with their units, the words a relation binds ("from X to Y"), particles ("log
in" / "log out"), scope words (all, first, only), degree (cheaper, most), the question word, and names.

`semantic_verifier.py` compares two frames into features and weighs them with a model trained on labelled
pairs. The word classes below are closed grammatical classes of English (auxiliaries, pronouns, particles,
quantifiers, weekday and month names), not a vocabulary of any domain: they do not grow with the data.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import lemminflect
import snowballstemmer

from llm_serve.textnorm import FILLER_WORDS, MEANINGFUL_WORDS, number_of, tokens, words

_STEMMER = snowballstemmer.stemmer("english")

PERSON = {
    **dict.fromkeys(words("i me my mine myself we us our ours ourselves"), "1"),
    **dict.fromkeys(words("you your yours yourself yourselves"), "2"),
    **dict.fromkeys(words("he him his himself she her hers herself they them their theirs themselves"), "3"),
}
NEGATIONS = frozenset(words("not no never without none nothing nobody nor neither"))
PAST_AUX = frozenset(words("did was were had"))
PERFECT_AUX = frozenset(words("have has"))
OBLIGATION = frozenset(words("must should ought required require requires mandatory compulsory obligatory necessary"))
PARTICLES = frozenset(words("up down out off on in back away"))
SCOPE = frozenset(words("all some every each only first last both either whole entire single latest previous"))
# "first" and "last" are scope words before a noun ("the last order"), not as verbs ("how long does it last").
_SCOPE_BEFORE_NOUN = frozenset(words("first last"))
# Degree words by kind: comparatives up or down, superlatives; "nearest" and "closest" are one kind.
DEGREE_WORDS = {"more": "er", "less": "less", "fewer": "less", "most": "est", "least": "least", "fewest": "least"}
# "more than 50" says what "over 50" says: folded before relations are read.
_COMPARATIVE_RELATIONS = {("more", "than"): "over", ("less", "than"): "under", ("fewer", "than"): "under"}
_ASKS_NEED = frozenset(words("do does did will if whether"))
_FRAMING_PAST = frozenset(words("wondering hoping thinking curious"))
_MODALS = frozenset(words("can could will would should shall may might must do does"))
WH = frozenset(words("why when where who whom whose"))
HOW_SPECIFIC = frozenset(words("much many long often far old big soon come"))
_WH_FOLD = {"soon": "when", "come": "why"}  # "how soon" asks when, "how come" asks why
RELATIONS = frozenset(
    words("after before within under over since until till than per from to into between")
) | frozenset(words("instead rather versus vs against"))
CALENDAR = frozenset(
    words(
        "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
        "august september october november december weekend weekday"
    )
)
# "can you tell me", "could you help me": a request frame whose "you" and "me" say nothing of the subject.
_FRAMING_VERBS = frozenset(words("tell help show explain let give walk guide remind advise"))
_REQUEST_AUX = frozenset(words("can could would will"))
_BE_GET = frozenset(words("is are am be being been get gets getting got"))
_FILLER = (FILLER_WORDS | frozenset(words("get got gets getting"))) - MEANINGFUL_WORDS
_ARTICLES = frozenset(words("a an the this that these those"))
# How people type in a chat box: contractions without the apostrophe and texting shorthand, folded before
# textnorm reads the text (it expands "didn't" but cannot know that "didnt" is the same word).
_TYPED = {
    **{w: w[:-2] + " not" for w in words("didnt doesnt dont isnt arent wasnt werent havent hasnt hadnt wouldnt")},
    **{w: w[:-2] + " not" for w in words("couldnt shouldnt mustnt")},
    "cant": "can not",
    "wont": "will not",
    "im": "i am",
    "ive": "i have",
    "youre": "you are",
    "whats": "what is",
    "wheres": "where is",
    "hows": "how is",
    "thats": "that is",
    "theres": "there is",
    "u": "you",
    "ur": "your",
    "r": "are",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "ty": "thanks",
}
_TYPED_RE = re.compile(r"\b(" + "|".join(sorted(_TYPED, key=len, reverse=True)) + r")\b", re.IGNORECASE)
# In the token sequence, modals that ask the same thing are one token: "can I pause" / "could I pause".
_SEQUENCE_FOLD = {**dict.fromkeys(words("could may might"), "can"), **dict.fromkeys(words("would shall"), "will")}
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*|\d[A-Za-z0-9]*")


@dataclass(frozen=True)
class Frame:
    """What `semantic_verifier.features` compares; exposed so reports and tests can show why."""

    lemmas: tuple[str, ...]
    surface: tuple[str, ...]
    sequence: tuple[str, ...]
    tokens: tuple[str, ...]
    compact: str
    numbers: tuple[str, ...]
    relations: frozenset[str]
    negated: bool
    past: bool
    obligation: bool
    persons: frozenset[str]
    subject: str | None
    particles: frozenset[str]
    scope: frozenset[str]
    degree: frozenset[str]
    wh: frozenset[str]
    names: frozenset[str]


@lru_cache(maxsize=65_536)
def lemma(word: str) -> str:
    """One canonical form per word: lemminflect's lemma (noun, then verb, adjective, adverb), Snowball-stemmed."""
    if not word.isalpha():
        return word
    found = lemminflect.getAllLemmas(word)
    for pos in ("NOUN", "VERB", "ADJ", "ADV", "AUX"):
        if pos in found:
            return _STEMMER.stemWord(found[pos][0])
    return _STEMMER.stemWord(word)


@lru_cache(maxsize=65_536)
def _verb_form(word: str) -> str | None:
    """The Penn tag of `word` as an inflected verb (VBD, VBN, VBG, VBZ), or None when it is not one."""
    found = lemminflect.getAllLemmas(word)
    if "VERB" not in found:
        return None
    base = found["VERB"][0]
    if base == word:
        return None
    for tag in ("VBD", "VBN", "VBG", "VBZ"):
        if word in lemminflect.getInflection(base, tag=tag):
            return tag
    return None


@lru_cache(maxsize=65_536)
def _degree(word: str) -> str | None:
    """'er' for cheaper, 'est' for cheapest; None for a word in its plain form."""
    if not word.isalpha() or len(word) < 5:
        return None
    found = lemminflect.getAllLemmas(word, upos="ADJ") or lemminflect.getAllLemmas(word, upos="ADV")
    for lemmas in found.values():
        base = lemmas[0]
        if base == word:
            continue
        if word in lemminflect.getInflection(base, tag="JJR") + lemminflect.getInflection(base, tag="RBR"):
            return "er"
        if word in lemminflect.getInflection(base, tag="JJS") + lemminflect.getInflection(base, tag="RBS"):
            return "est"
    return None


def _names(text: str) -> frozenset[str]:
    """Capitalised words not at a sentence's start, codes with digits, and calendar words: exact-match entities."""
    found: set[str] = set()
    text = unicodedata.normalize("NFKC", text)
    for m in _WORD.finditer(text):
        word = m.group(0)
        before = text[: m.start()].rstrip()
        starts_sentence = not before or before[-1] in ".!?:;\"'("
        lower = word.lower()
        calendar = lower in CALENDAR and lower != "may"
        code = any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
        capitalised = word[0].isupper() or (len(word) > 1 and word[1:].isupper())
        if calendar or code or (word != "I" and not starts_sentence and capitalised):
            found.add(lower)
    return frozenset(found)


def frame(text: str, synonyms: dict[str, str] | None = None) -> Frame:
    """Reduce a question; `synonyms` maps a lemma onto the lemma that stands for its group."""
    return _frame(text, tuple(sorted((synonyms or {}).items())))


@lru_cache(maxsize=8192)
def _frame(text: str, synonyms: tuple[tuple[str, str], ...]) -> Frame:
    mapping = dict(synonyms)
    raw = tokens(_TYPED_RE.sub(lambda m: _TYPED[m.group(1).lower()], text))
    for i in range(len(raw) - 1):
        if (raw[i], raw[i + 1]) in _COMPARATIVE_RELATIONS:
            raw[i : i + 2] = [_COMPARATIVE_RELATIONS[(raw[i], raw[i + 1])], ""]
    raw = [w for w in raw if w]
    n = len(raw)
    skip: set[int] = set()
    # Request frames: "can/could/would/will you (please) tell/help/show me ..." says nothing of the subject.
    for i in range(n - 1):
        if raw[i] in _REQUEST_AUX and raw[i + 1] == "you":
            j = i + 2 + (i + 2 < n and raw[i + 2] == "please")
            if j < n and raw[j] in _FRAMING_VERBS:
                skip.update({i + 1, j})
                if j + 1 < n and raw[j + 1] in ("me", "us"):
                    skip.add(j + 1)
    negations = 0
    past = obligation = False
    persons: set[str] = set()
    subject: str | None = None
    particles: set[str] = set()
    scope: set[str] = set()
    degree: set[str] = set()
    wh: set[str] = set()
    numbers: list[str] = []
    relations: set[str] = set()
    lemmas: list[str] = []
    surface: list[str] = []
    last_content: str | None = None
    for i, token in enumerate(raw):
        if i in skip:
            continue
        prev = raw[i - 1] if i else ""
        nxt = raw[i + 1] if i + 1 < n else ""
        if (number := number_of(token)) is not None:
            unit = lemma(nxt) if nxt.isalpha() and nxt not in _FILLER and nxt not in RELATIONS else ""
            numbers.append(f"{number} {unit}".strip())
            lemmas.append(number)
            surface.append(token)
            last_content = number
            continue
        if token in NEGATIONS:
            negations += 1
            continue
        if token in PERSON:
            persons.add(PERSON[token])
            if subject is None and token in ("i", "we", "you", "he", "she", "they"):
                subject = PERSON[token]
            continue
        if token in PAST_AUX:
            past = past or nxt not in _FRAMING_PAST  # "I was wondering" frames a question about now
            continue
        if token in PERFECT_AUX:
            # "have I been charged", "has my order shipped": the perfect asks about the past.
            ahead = raw[i + 1 : i + 4]
            if any(w == "been" or _verb_form(w) == "VBN" for w in ahead):
                past = True
            if nxt == "to":  # "do I have to"
                obligation = True
            continue
        # "do I need (to)", "does it need": asked of a rule, unlike "I need to reset my password".
        if token in OBLIGATION or (token in ("need", "needs") and any(w in _ASKS_NEED for w in raw[max(0, i - 3) : i])):
            obligation = True
            continue
        if token in WH:
            wh.add("who" if token == "whom" else token)
            continue
        if token == "how" and nxt in HOW_SPECIFIC:
            wh.add(_WH_FOLD.get(nxt, f"how {nxt}"))
            continue
        if token == "what" and nxt == "time":
            wh.add("when")
            continue
        if token in SCOPE and (token not in _SCOPE_BEFORE_NOUN or (nxt and nxt not in _FILLER)):
            scope.add(token)
            continue
        if token in DEGREE_WORDS:
            degree.add(DEGREE_WORDS[token])
            continue
        if token in PARTICLES and last_content is not None and prev not in _FILLER and _verb_like(prev):
            particles.add(f"{lemma(prev)}:{token}")
            continue
        if token in RELATIONS:
            target = _next_content(raw, i + 1, skip)
            if target is not None and (token not in ("to", "into") or last_content is not None):
                relations.add(f"{token}:{lemma(target) if target.isalpha() else number_of(target) or target}")
            continue
        if token in _FILLER or token in ("will", "shall"):
            continue
        if token in HOW_SPECIFIC and prev == "how":
            continue
        form = _verb_form(token)
        # A bare past form ("I ordered the wrong size") dates the question; after an auxiliary or "be"
        # ("do I track something I ordered", "is my data encrypted") it does not.
        if form == "VBD" and not any(w in _BE_GET or w in _MODALS for w in raw[:i]):
            past = True
        if (deg := _degree(token)) is not None:
            degree.add(deg)
        word = lemma(token)
        word = mapping.get(word, word)
        lemmas.append(word)
        surface.append(token)
        last_content = word
    kept = [w for i, w in enumerate(raw) if i not in skip and w not in _ARTICLES]
    return Frame(
        lemmas=tuple(lemmas),
        surface=tuple(surface),
        sequence=tuple(_SEQUENCE_FOLD.get(w, lemma(w)) for w in kept),
        tokens=tuple(kept),
        compact=re.sub(r"[^a-z0-9]", "", unicodedata.normalize("NFKC", text).lower()),
        numbers=tuple(sorted(numbers)),
        relations=frozenset(relations),
        negated=negations % 2 == 1,
        past=past,
        obligation=obligation,
        persons=frozenset(persons),
        subject=subject,
        particles=frozenset(particles),
        scope=frozenset(scope),
        degree=frozenset(degree),
        wh=frozenset(wh),
        names=_names(text),
    )


def _verb_like(word: str) -> bool:
    return word.isalpha() and "VERB" in lemminflect.getAllLemmas(word)


def _next_content(raw: list[str], start: int, skip: set[int]) -> str | None:
    for j in range(start, min(start + 4, len(raw))):
        if j in skip:
            continue
        word = raw[j]
        if number_of(word) is not None or (word not in _FILLER and word not in PERSON and word not in RELATIONS):
            return word
    return None
