"""Guardrails on the generation path: the caller's input before anything renders, the answer before it leaves.

A request's policies are the config's defaults, then its key's, then its model's (llm_serve/config.py
`GuardrailsConfig`); the decision itself is llm_serve/safety/guard.py. Where each check runs:

- **input** (`GuardInput`, a stage right after resolve): the caller's own text, that is message
  contents, a completion prompt and a registry prompt's variables, never the registry's template
  (which the operator wrote). Before admission, so a blocked request reserves and costs nothing.
- **output, JSON** (`Guardrails.output_payload`): each choice's content, after pricing (the engine
  produced those tokens: a blocked answer is still billed) and before the cache fill, so a blocked
  answer is never stored and a redacted one is stored redacted. Cache hits pass the same check.
- **output, streamed** (`StreamGuard`, called by the relay on every event): redaction holds back the
  last `stream_holdback_chars` characters so a match split across chunks is still caught; toxicity is
  re-checked every `stream_check_chars`. A block ends the stream with the policy's refusal and
  `finish_reason: "content_filter"` (what OpenAI's own filter sends), and cancels the engine call.

Every finding goes on the ledger row (`guardrail`), the request's span (an event per finding), the
`llm_serve_guardrail_findings` counter and, while headers can still be sent, `x-llm-serve-guardrail`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_serve.config import Config, GuardChecks, GuardrailPolicy
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.safety.guard import Finding, Verdict, check_texts
from llm_serve.safety.pii import PiiMatch, find_pii, non_overlapping, redact
from llm_serve.safety.toxicity import toxicity
from llm_serve.sse import DATA_PREFIX, sse

GUARDRAIL_EVENT = "llm_serve.guardrail"
BLOCK_CODES = {"input": "input_blocked", "output": "output_blocked"}
LEDGER_LABEL_CHARS = 128

Setter = Callable[[str], None]


def _message_slots(messages: Any) -> list[tuple[str, Setter]]:
    """(text, setter) for every text a chat request carries; shapes the validator will refuse are skipped."""
    slots: list[tuple[str, Setter]] = []
    if not isinstance(messages, list):
        return slots
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append((content, lambda text, m=message: m.__setitem__("content", text)))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    slots.append((part["text"], lambda text, p=part: p.__setitem__("text", text)))
    return slots


def _value_slots(container: Any) -> list[tuple[str, Setter]]:
    """Every string inside a JSON value (a prompt's variables), each with a setter that writes it back."""
    slots: list[tuple[str, Setter]] = []
    items = (
        container.items()
        if isinstance(container, dict)
        else enumerate(container)
        if isinstance(container, list)
        else ()
    )
    for key, value in items:
        if isinstance(value, str):
            slots.append((value, lambda text, c=container, k=key: c.__setitem__(k, text)))
        elif isinstance(value, dict | list):
            slots.extend(_value_slots(value))
    return slots


def input_slots(ctx: RequestContext) -> list[tuple[str, Setter]]:
    data = ctx.data
    if ctx.route == "chat":
        slots = _message_slots(data.get("messages"))
    elif isinstance(data.get("prompt"), str):
        slots = [(data["prompt"], lambda text: data.__setitem__("prompt", text))]
    else:  # a list of prompts (token-id prompts have no text to check)
        slots = _value_slots(data.get("prompt") if isinstance(data.get("prompt"), list) else [])
    if isinstance(ctx.prompt_raw, dict) and isinstance(ctx.prompt_raw.get("variables"), dict):
        slots += _value_slots(ctx.prompt_raw["variables"])
    return slots


@dataclass
class Guardrails:
    config: Config
    metrics: Any = None
    models: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        self.models = {m.id: list(m.guardrails) for m in self.config.models}
        policies = self.config.guardrails.policies.values()
        if any(c is not None and c.toxicity is not None for p in policies for c in (p.input, p.output)):
            from llm_serve.safety.toxicity import scorer

            scorer()  # the classifier loads now (~1 s), not on the first request a policy checks

    @property
    def enabled(self) -> bool:
        return bool(self.config.guardrails.policies)

    def policies(self, ctx: RequestContext) -> list[tuple[str, GuardrailPolicy]]:
        """The request's policies, in order (defaults, key, model), each once. The model's are those of
        every pool that may answer it (the primary and its fallbacks): the policies are fixed before
        dispatch, and a fallback's answer must pass the fallback's own checks too."""
        guard = self.config.guardrails
        pools = ctx.candidates or [ctx.row.model]
        names = [
            *guard.default,
            *(ctx.caller.key.guardrails if ctx.caller.key else ()),
            *(name for pool in pools for name in self.models.get(pool, ())),
        ]
        return [(n, guard.policies[n]) for n in dict.fromkeys(names)]

    def checks(self, ctx: RequestContext, direction: str) -> list[tuple[str, GuardChecks]]:
        if ctx.guard_policies is None:
            ctx.guard_policies = self.policies(ctx) if self.enabled else []
        return [(name, c) for name, p in ctx.guard_policies if (c := getattr(p, direction)) is not None]

    def record(self, ctx: RequestContext, findings: list[Finding]) -> None:
        for finding in findings:
            ctx.guard_findings.append(finding)
            if ctx.span is not None:
                ctx.span.add_event(
                    GUARDRAIL_EVENT,
                    {
                        "llm_serve.guardrail.policy": finding.policy,
                        "llm_serve.guardrail.direction": finding.direction,
                        "llm_serve.guardrail.check": finding.check,
                        "llm_serve.guardrail.action": finding.action,
                        "llm_serve.guardrail.detail": finding.detail,
                    },
                )
            if self.metrics is not None:
                self.metrics.guardrail_findings.inc(
                    1, {"direction": finding.direction, "check": finding.check, "action": finding.action}
                )
        if ctx.guard_findings:
            labels = dict.fromkeys(f.label for f in ctx.guard_findings)
            ctx.row.guardrail = ",".join(labels)[:LEDGER_LABEL_CHARS]

    def refuse(self, finding: Finding, param: str | None) -> OpenAIError:
        what = "request" if finding.direction == "input" else "answer"
        return OpenAIError(
            400,
            f"the {what} was blocked by the guardrail policy '{finding.policy}' ({finding.check}: {finding.detail})",
            code=BLOCK_CODES[finding.direction],
            param=param,
        )

    def output_payload(self, ctx: RequestContext, payload: dict[str, Any]) -> None:
        """Check (and redact in place) a whole answer; raises the 400 when a policy blocks it."""
        checks = self.checks(ctx, "output")
        if not checks:
            return
        slots = _payload_slots(payload)
        verdict: Verdict = check_texts([text for text, _ in slots], checks, "output")
        self.record(ctx, verdict.findings)
        if (blocked := verdict.blocked) is not None:
            raise self.refuse(blocked, None)
        if verdict.redacted:
            for (_, setter), text in zip(slots, verdict.texts, strict=True):
                setter(text)

    def stream_guard(self, ctx: RequestContext) -> StreamGuard | None:
        checks = self.checks(ctx, "output")
        if not checks:
            return None
        refusals = {name: p.refusal for name, p in ctx.guard_policies or ()}
        return StreamGuard(self, ctx, checks, refusals)


def _payload_slots(payload: dict[str, Any]) -> list[tuple[str, Setter]]:
    slots: list[tuple[str, Setter]] = []
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if isinstance(message, dict):
            if isinstance(message.get("content"), str):
                slots.append((message["content"], lambda text, m=message: m.__setitem__("content", text)))
            for call in message.get("tool_calls") or ():  # a model can put a card number in a tool's arguments
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    slots.append((function["arguments"], lambda text, f=function: f.__setitem__("arguments", text)))
        elif isinstance(choice.get("text"), str):
            slots.append((choice["text"], lambda text, c=choice: c.__setitem__("text", text)))
    return slots


class GuardInput:
    """The input stage: check, then block (400 `input_blocked`), flag, or redact the caller's text in place."""

    def __init__(self, guardrails: Guardrails) -> None:
        self.guardrails = guardrails

    async def __call__(self, ctx: RequestContext) -> None:
        checks = self.guardrails.checks(ctx, "input")
        if not checks:
            return
        slots = input_slots(ctx)
        if not slots:
            return
        verdict = check_texts([text for text, _ in slots], checks, "input")
        self.guardrails.record(ctx, verdict.findings)
        if (blocked := verdict.blocked) is not None:
            raise self.guardrails.refuse(blocked, "messages" if ctx.route == "chat" else "prompt")
        if verdict.redacted:
            for (_, setter), text in zip(slots, verdict.texts, strict=True):
                setter(text)


@dataclass
class _Choice:
    raw: str = ""  # everything the engine produced for this choice
    released: int = 0  # characters of `raw` already sent on (redacted)
    checked: int = 0  # length of `raw` at its last toxicity check


class StreamGuard:
    """Output checks on a relayed stream, one event at a time (see the module docstring)."""

    def __init__(
        self,
        guardrails: Guardrails,
        ctx: RequestContext,
        checks: list[tuple[str, GuardChecks]],
        refusals: dict[str, str] | str,
    ) -> None:
        self.guardrails = guardrails
        self.ctx = ctx
        self.refusals = refusals if isinstance(refusals, dict) else {name: refusals for name, _ in checks}
        self.pii = [(name, c.pii) for name, c in checks if c.pii is not None]
        self.redacting = [(name, pii) for name, pii in self.pii if pii.action == "redact"]
        self.toxicity = [(name, c.toxicity) for name, c in checks if c.toxicity is not None]
        settings = guardrails.config.guardrails
        # Any PII check that acts on a match (redact, block) needs the text whole: a number arriving token by
        # token never matches piece by piece. Flag-only checks look at the whole answer at its end instead.
        self.holdback = settings.stream_holdback_chars if any(p.action != "flag" for _, p in self.pii) else 0
        self.every = settings.stream_check_chars
        self.window = settings.stream_check_window_chars
        self.choices: dict[int, _Choice] = {}
        self.blocked: Finding | None = None
        self.head: dict[str, Any] = {}  # id, object, created, model of the stream's chunks
        self._seen: set[str] = set()  # finding labels recorded already (a flag is recorded once)

    def process(self, event: str) -> str:
        """The event as it should be sent: content redacted or held back, or the refusal when blocked."""
        if self.blocked is not None:
            return ""  # the refusal was the last word: nothing the engine makes after it is sent
        if not event.startswith(DATA_PREFIX + "{"):
            return event
        try:
            payload = json.loads(event[len(DATA_PREFIX) :])
        except ValueError:
            return event
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            return event
        if not self.head:
            self.head = {k: payload[k] for k in ("id", "object", "created", "model") if k in payload}
        changed = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            chat = isinstance(delta, dict)
            piece = (delta.get("content") if chat else choice.get("text")) or ""
            final = choice.get("finish_reason") is not None
            if not isinstance(piece, str) or (not piece and not final):
                continue
            state = self.choices.setdefault(int(choice.get("index") or 0), _Choice())
            state.raw += piece
            finding = self._check_toxicity(state, final)
            if finding is not None:
                self.blocked = finding
                return self._refusal_event(payload, choice)
            out = self._release(state, final)
            if self.blocked is not None:
                return self._refusal_event(payload, choice)
            if final:
                self._check_pii_flags(state)
            if out != piece:
                if chat:
                    delta["content"] = out
                else:
                    choice["text"] = out
                changed = True
        return sse(payload) if changed else event

    def _check_toxicity(self, state: _Choice, final: bool) -> Finding | None:
        if not self.toxicity or (len(state.raw) - state.checked < self.every and not final):
            return None
        state.checked = len(state.raw)
        # The recent window, not the whole answer: bounded work per check (a long answer would make the
        # re-checks quadratic), and a toxic passage is not diluted by the clean text before it.
        score = toxicity(state.raw[-self.window :])
        for name, check in self.toxicity:
            if score >= check.threshold:
                finding = Finding(name, "output", "toxicity", check.action, f"{score:.3f}")
                self._record(finding)
                if check.action == "block":
                    return finding
        return None

    def _check_pii_flags(self, state: _Choice) -> None:
        """Flag-only PII checks look at the whole answer once, at its end (nothing to hold back for them)."""
        for name, pii in self.pii:
            if pii.action != "flag":
                continue
            kinds = {m.kind for m in find_pii(state.raw, pii.kinds, pii.phone_region)}
            if kinds:
                self._record(Finding(name, "output", "pii", "flag", ",".join(sorted(kinds))))

    def _release(self, state: _Choice, final: bool) -> str:
        """What of this choice's unsent text may go now, redacted; the last `holdback` characters wait
        (all of it goes at the end), and the cut never falls inside a match."""
        tail = state.raw[state.released :]
        active = [(name, pii) for name, pii in self.pii if pii.action != "flag"]
        if not active:
            state.released = len(state.raw)
            return tail
        cut = len(tail) if final else max(0, len(tail) - self.holdback)
        found = [(name, pii, find_pii(tail, pii.kinds, pii.phone_region)) for name, pii in active]
        moved = True
        while moved:  # moving the cut back to one match's start can put it inside another's
            moved = False
            for _, _, matches in found:
                for m in matches:
                    if m.start < cut < m.end:
                        cut, moved = m.start, True
        redactions: list[PiiMatch] = []
        for name, pii, matches in found:
            inside = [m for m in matches if m.end <= cut]
            if not inside:
                continue
            finding = Finding(name, "output", "pii", pii.action, ",".join(sorted({m.kind for m in inside})))
            self._record(finding)
            if pii.action == "block":
                self.blocked = finding
                return ""
            redactions += inside
        state.released += cut
        return redact(tail[:cut], non_overlapping(redactions))

    def _record(self, finding: Finding) -> None:
        key = f"{finding.policy}:{finding.label}"
        if key in self._seen:
            return
        self._seen.add(key)
        self.guardrails.record(self.ctx, [finding])

    def _refusal_event(self, payload: dict[str, Any], choice: dict[str, Any]) -> str:
        """One last content chunk: the unsent rest is dropped, the refusal said, the reason content_filter."""
        index = choice.get("index") or 0
        head = {k: payload[k] for k in ("id", "object", "created", "model") if k in payload}
        body = {"index": index, "finish_reason": "content_filter"}
        refusal = self.refusals.get(self.blocked.policy if self.blocked else "", next(iter(self.refusals.values()), ""))
        if isinstance(choice.get("delta"), dict):
            body["delta"] = {"content": refusal}
        else:
            body["text"] = refusal
        event: dict[str, Any] = {**head, "choices": [body]}
        if "usage" in payload:  # the engine's running count up to this chunk: the relay prices from it
            event["usage"] = payload["usage"]
        return sse(event)
