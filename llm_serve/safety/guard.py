"""Guardrail checks on texts: the decision, independent of HTTP (the router applies it, router/guardrails.py).

A request gets several policies (the defaults, its key's, its model's); they are applied in that
order, each on the text the previous one left (a redaction is seen by the next check), and the first
block ends it. Each text is scored for toxicity once, whatever the number of policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from llm_serve.config import GuardChecks
from llm_serve.safety.pii import find_pii, redact
from llm_serve.safety.toxicity import toxicity_scores


@dataclass(frozen=True)
class Finding:
    policy: str
    direction: str  # input | output
    check: str  # toxicity | pii
    action: str  # block | flag | redact
    detail: str  # the score, or the PII kinds found (never the values)

    @property
    def label(self) -> str:
        return f"{self.direction}:{self.check}={self.action}"


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the texts after redaction (unchanged when none)
    redacted: bool = False

    @property
    def blocked(self) -> Finding | None:
        return next((f for f in self.findings if f.action == "block"), None)


def check_texts(texts: Sequence[str], policies: Sequence[tuple[str, GuardChecks]], direction: str) -> Verdict:
    verdict = Verdict(texts=list(texts))
    scores: list[float] | None = None
    for name, checks in policies:
        if checks.pii is not None:
            pii = checks.pii
            kinds: set[str] = set()
            for i, text in enumerate(verdict.texts):
                matches = find_pii(text, pii.kinds, pii.phone_region)
                if not matches:
                    continue
                kinds.update(m.kind for m in matches)
                if pii.action == "redact":
                    verdict.texts[i] = redact(text, matches)
                    verdict.redacted = True
                    scores = None  # the text changed: score it again if a toxicity check follows
            if kinds:
                verdict.findings.append(Finding(name, direction, "pii", pii.action, ",".join(sorted(kinds))))
                if pii.action == "block":
                    return verdict
        if checks.toxicity is not None:
            if scores is None:
                scores = toxicity_scores(verdict.texts)
            worst = max(scores, default=0.0)
            if worst >= checks.toxicity.threshold:
                action = checks.toxicity.action
                verdict.findings.append(Finding(name, direction, "toxicity", action, f"{worst:.3f}"))
                if action == "block":
                    return verdict
    return verdict
