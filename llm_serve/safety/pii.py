"""PII in text: e-mail addresses, phone numbers and payment card numbers, found and redacted.

Phone numbers come from `phonenumbers` (Google's libphonenumber), which knows every country's
numbering plan: a regex for "digits with dashes" would flag order numbers and miss "+44 20 7946 0958".
Numbers without a country code are read in the configured region; `+CC` numbers match anywhere.

Cards and e-mail addresses are patterns of our own, because the libraries that detect them (Presidio,
scrubadub) need a spaCy model from a model hub for their pipeline, which this project cannot assume.
A card is 13 to 19 digits, optionally grouped by single spaces or dashes, that passes the Luhn
checksum (which also keeps a random 16-digit order number from matching, 9 times in 10). E-mail is the
practical subset of RFC 5322 that mail systems deliver to (local part, @, dotted domain with a TLD).
Presidio (presidio-analyzer) is the upgrade when a deployment can install a spaCy model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}(?![\w-])")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
SEVEN_DIGITS = re.compile(r"\d(?:\D*\d){6}")  # no phone number has fewer
CANDIDATE = re.compile(r"[\d@]")  # every kind needs a digit or an @: text without either is skipped at once
PLACEHOLDER = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]"}
ALL_KINDS = ("email", "phone", "card")


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (ISO/IEC 7812); ten lines, no dependency."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterable[PiiMatch]:
    for m in CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield PiiMatch("card", m.start(), m.end())


def _phones(text: str, region: str) -> Iterable[PiiMatch]:
    if not SEVEN_DIGITS.search(text):  # skip the matcher's work where no number can be
        return
    import phonenumbers

    for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
        yield PiiMatch("phone", m.start, m.end)


def find_pii(text: str, kinds: Iterable[str] = ALL_KINDS, region: str = "US") -> list[PiiMatch]:
    """Non-overlapping matches, in order; where two kinds overlap (a card's digits read as a phone
    number) the earlier, then longer, match wins."""
    if not CANDIDATE.search(text):
        return []
    wanted = set(kinds)
    found: list[PiiMatch] = []
    if "email" in wanted and "@" in text:
        found += [PiiMatch("email", m.start(), m.end()) for m in EMAIL.finditer(text)]
    if "card" in wanted:
        found += list(_cards(text))
    if "phone" in wanted:
        found += list(_phones(text, region))
    return non_overlapping(found)


def non_overlapping(matches: Iterable[PiiMatch]) -> list[PiiMatch]:
    """Sorted by position; of overlapping matches the earlier, then the longer, is kept."""
    kept: list[PiiMatch] = []
    for match in sorted(matches, key=lambda m: (m.start, -(m.end - m.start))):
        if not kept or match.start >= kept[-1].end:
            kept.append(match)
    return kept


def redact(text: str, matches: list[PiiMatch]) -> str:
    """`text` with each match replaced by its placeholder (`matches` as `find_pii` returns them)."""
    if not matches:
        return text
    out, at = [], 0
    for m in matches:
        out.append(text[at : m.start])
        out.append(PLACEHOLDER[m.kind])
        at = m.end
    out.append(text[at:])
    return "".join(out)
