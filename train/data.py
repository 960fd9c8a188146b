"""Fine-tuning data: load and validate JSONL, split, tokenize with assistant-only labels, collate.

Validation is strict and exhaustive up front because a bad line found by a Ray worker an hour into a
run costs far more than a complete error list printed before anything is scheduled.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llm_serve.jsonl import LineErrors, read_objects

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # torch's CrossEntropyLoss default ignore_index
MAX_ERRORS = 20
ROLES = ("system", "user", "assistant")
CHAT_KEYS = frozenset({"messages"})
PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion", "system"})

Format = Literal["auto", "chat", "prompt_completion"]


class DataError(ValueError):
    """A dataset problem the user must fix; every line of the message names the file and 1-based line."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors) or [message]


@dataclass(frozen=True)
class Example:
    """One conversation, always in chat form so the rest of the pipeline has a single shape to handle."""

    messages: tuple[dict[str, str], ...]
    line: int
    # Only for error messages; excluded from equality so the same conversation compares equal anywhere.
    source: str = field(default="", compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else f"line {self.line}"


# --------------------------------------------------------------------------------------------- loading


def _form_of(obj: dict[str, Any]) -> str:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    return "unknown"


def _check_text(value: Any, what: str) -> str | None:
    """Return a problem description, or None if `value` is usable text."""
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"{what} is empty"
    return None


def _parse_chat(obj: dict[str, Any]) -> tuple[tuple[dict[str, str], ...] | None, list[str]]:
    problems: list[str] = []
    unknown = sorted(set(obj) - CHAT_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (chat form allows only 'messages')")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return None, [*problems, "'messages' must be a non-empty list"]
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(f"{where} must be an object, got {type(msg).__name__}")
            continue
        extra = sorted(set(msg) - {"role", "content"})
        if extra:
            problems.append(f"{where} has unknown key(s) {extra} (allowed: 'role', 'content')")
        role = msg.get("role")
        if role not in ROLES:
            problems.append(f"{where}.role must be one of {list(ROLES)}, got {role!r}")
        elif role == "system" and i != 0:
            # Most chat templates reject or silently misplace a mid-conversation system message.
            problems.append(f"{where}: a system message is only allowed first")
        if (problem := _check_text(msg.get("content"), f"{where}.content")) is not None:
            problems.append(problem)
        out.append({"role": str(role), "content": str(msg.get("content"))})  # only returned when all valid
    if isinstance(messages[-1], dict) and messages[-1].get("role") in ("system", "user"):  # a bad role: said above
        problems.append("the last message must be from the assistant (it is what the model learns to say)")
    return (tuple(out) if not problems else None), problems


def _parse_prompt_completion(obj: dict[str, Any]) -> tuple[tuple[dict[str, str], ...] | None, list[str]]:
    problems: list[str] = []
    unknown = sorted(set(obj) - PROMPT_COMPLETION_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (prompt/completion form allows 'prompt', 'completion', 'system')")
    for key in ("prompt", "completion"):
        if key not in obj:
            problems.append(f"missing '{key}'")
        elif (problem := _check_text(obj[key], f"'{key}'")) is not None:
            problems.append(problem)
    if "system" in obj and (problem := _check_text(obj["system"], "'system'")) is not None:
        problems.append(problem)
    if problems:
        return None, problems
    messages = [{"role": "system", "content": obj["system"]}] if "system" in obj else []
    messages += [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    return tuple(messages), []


def load_examples(path: str | Path, fmt: Format = "auto") -> list[Example]:
    """Read a JSONL dataset into chat-form examples, reporting up to 20 problems at once."""
    if fmt not in ("auto", "chat", "prompt_completion"):
        raise ValueError(f"unknown dataset format {fmt!r}")
    source = str(path)
    errors = LineErrors(source, MAX_ERRORS)
    examples: list[Example] = []
    expected = None if fmt == "auto" else fmt
    expected_line = 0
    mixed_lines = 0
    for n, obj in read_objects(path, errors, DataError):
        form = _form_of(obj)
        if form == "unknown":
            errors.report(n, f"neither chat form ('messages') nor prompt/completion form; keys: {sorted(obj)}")
            continue
        if expected is None:
            expected, expected_line = form, n
        elif form != expected:
            # A mixed file is usually two datasets concatenated by mistake: name the first offending line only.
            mixed_lines += 1
            if mixed_lines == 1:
                because = f"line {expected_line} uses {expected} form" if fmt == "auto" else f"format is {fmt!r}"
                errors.report(n, f"uses {form} form but {because}; a file must use one form")
            continue
        messages, problems = (_parse_chat if form == "chat" else _parse_prompt_completion)(obj)
        for problem in problems:
            errors.report(n, problem)
        if messages is not None:
            examples.append(Example(messages=messages, line=n, source=source))

    if mixed_lines > 1:
        errors.report(None, f"{mixed_lines - 1} more line(s) use the other form")
    if errors:
        raise DataError("\n".join(errors.all()), errors.all())
    if not examples:
        raise DataError(f"{source}: no examples (the file is empty)")
    return examples


def dataset_hash(path: str | Path) -> str:
    """Short content hash recorded with an adapter, so a result can be traced to the exact data it saw."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def split(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split; eval is never silently empty when asked for, train never empty."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(examples)
    if n == 0:
        raise ValueError("no examples to split")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    n_eval = 0
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(1, round(n * eval_fraction)), n - 1)
    return shuffled[n_eval:], shuffled[:n_eval]


# ------------------------------------------------------------------------------------------ tokenizing


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], gen: bool) -> str:
    text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=gen)
    if not isinstance(text, str):  # some versions wrap a single rendering in a list
        text = text[0]
    return text


@dataclass(frozen=True)
class _Turn:
    """Character offsets of one assistant turn in the rendered text: [start, end) with the content ending at
    content_end; what lies between content_end and end is the template's closing markup."""

    start: int
    content_end: int
    end: int


def _assistant_turns(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], full: str
) -> list[_Turn]:
    """Locate each assistant turn inside the rendered conversation `full`.

    The difference between the prompt rendered with a generation prompt and the prompt plus the reply is exactly
    what the model emits for that turn, whatever the template's markup. Templates that rewrite history (or cannot
    render an empty prefix) break that identity; then the content itself is searched for in the text.
    """
    turns: list[_Turn] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        content = msg["content"].strip()
        turn = None
        if i:
            try:
                before = _render(tokenizer, messages[:i], gen=True)
                after = _render(tokenizer, messages[: i + 1], gen=False)
            except Exception:  # a template-specific refusal; fall back to searching
                before = after = ""
            if before and after.startswith(before) and full.startswith(after) and len(before) >= cursor:
                at = full.find(content, len(before), len(after))
                content_end = at + len(content) if at >= 0 else len(before)
                turn = _Turn(len(before), content_end, len(after))
        if turn is None:
            at = full.find(content, cursor)
            if at < 0:
                continue  # the template dropped this turn; there is nothing to learn from it
            turn = _Turn(at, at + len(content), at + len(content))
        turns.append(turn)
        cursor = turn.end
    return turns


def _token_index(tokenizer: PreTrainedTokenizerBase, full: str) -> tuple[list[int], Callable[[int], int]]:
    """Token ids of `full` and a map from a character offset to the number of tokens starting before it."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        starts = [a for a, _ in enc["offset_mapping"]]
        return list(enc["input_ids"]), lambda pos: bisect.bisect_left(starts, pos)
    # Slow tokenizers have no offsets: count the tokens of each prefix instead.
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return list(ids), lambda pos: len(tokenizer(full[:pos], add_special_tokens=False)["input_ids"])


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return ids


def _label_range(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], turn: _Turn, to_token: Callable[[int], int], special: set[int]
) -> tuple[int, int]:
    """Token range to learn for one turn: the content through the end-of-turn token, so the model learns to stop,
    but not the template's trailing newline. The end-of-turn is searched for only after the content, since a
    content character can itself map to a special token (an unknown-token id)."""
    start, content_end, end = to_token(turn.start), to_token(turn.content_end), to_token(turn.end)
    for j in range(content_end, min(max(end, content_end + 1), len(ids))):
        if ids[j] in special:
            return start, j + 1
    while end > max(start, content_end) and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return start, max(end, content_end)


def tokenize(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list[int]]:
    """Render with the model's own chat template and label only what the assistant says (incl. end-of-turn)."""
    messages = example.messages
    full = _render(tokenizer, messages, gen=False)
    ids, to_token = _token_index(tokenizer, full)
    special = _special_ids(tokenizer)
    labels = [IGNORE_INDEX] * len(ids)
    for turn in _assistant_turns(tokenizer, messages, full):
        lo, hi = _label_range(tokenizer, ids, turn, to_token, special)
        labels[lo:hi] = ids[lo:hi]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(f"{example.where}: the chat template rendered no assistant tokens")
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(f"{example.where}: longer than max_length {max_length}, no assistant tokens left")
    return {"input_ids": ids, "labels": labels}


def tokenize_all(
    examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict[str, list[int]]]:
    """Tokenize everything, reporting every over-long example at once rather than the first."""
    out: list[dict[str, list[int]]] = []
    errors: list[str] = []
    for example in examples:
        try:
            out.append(tokenize(example, tokenizer, max_length))
        except DataError as exc:
            errors.extend(exc.errors)
            if len(errors) >= MAX_ERRORS:
                errors.append(f"stopped after {MAX_ERRORS} errors")
                break
    if errors:
        raise DataError("\n".join(errors), errors)
    return out


# ------------------------------------------------------------------------------------------- batching


def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; the mask comes from lengths, so pad_id may equal eos without harm."""
    import torch

    if not batch:
        raise ValueError("cannot collate an empty batch")
    width = max(len(row["input_ids"]) for row in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def count_tokens(batch: Mapping[str, Any] | Sequence[Mapping[str, Sequence[int]]]) -> int:
    """Real (non-pad) tokens, for honest tokens/s: a collated batch's mask, or raw rows' lengths."""
    if isinstance(batch, Mapping):
        return int(batch["attention_mask"].sum())
    return sum(len(row["input_ids"]) for row in batch)
