"""The training data layer: validation that reports every problem with its line, and assistant-only labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny_model import build_tiny_llama
from train.data import (
    IGNORE_INDEX,
    DataError,
    Example,
    collate,
    count_tokens,
    dataset_hash,
    load_examples,
    split,
    tokenize,
    tokenize_all,
)

REPO = Path(__file__).resolve().parents[2]
FAQ = REPO / "data" / "faq"
SYSTEM = "You are the customer assistant of Quillfeather Bicycles."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tokenizers import decoders
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model"))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    # The tiny tokenizer ships without a decoder, so decode() would show byte-level 'Ġ' markers between tokens.
    tok.backend_tokenizer.decoder = decoders.ByteLevel()
    return tok


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def labelled(row: dict[str, list[int]]) -> list[int]:
    return [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]


# ----------------------------------------------------------------------------------------------- loading


def test_both_forms_load_into_chat_form(tmp_path: Path) -> None:
    chat_file = write_jsonl(tmp_path / "chat.jsonl", [chat(("user", "hi"), ("assistant", "hello")), ""])
    pc_file = write_jsonl(
        tmp_path / "pc.jsonl",
        [{"prompt": "hi", "completion": "hello"}, "   ", {"system": "be brief", "prompt": "q", "completion": "a"}],
    )
    (ex,) = load_examples(chat_file)
    hi_hello = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})
    assert ex == Example(messages=hi_hello, line=1)
    first, second = load_examples(pc_file, fmt="prompt_completion")
    assert first.messages == ex.messages and first.line == 1
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant"] and second.line == 3
    assert load_examples(chat_file, fmt="chat") == [ex]


def test_all_errors_reported_at_once_with_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            chat(("user", "ok"), ("assistant", "fine")),  # 1
            "{not json",  # 2
            chat(("user", "no answer")),  # 3: last message not assistant
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "extra": 1},  # 4
            chat(("user", "q"), ("robot", "a")),  # 5
            "",  # 6: blank, skipped
            "[1, 2]",  # 7
            chat(("user", "q"), ("assistant", "")),  # 8
        ],
    )
    with pytest.raises(DataError) as info:
        load_examples(path)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.errors) == 6
    assert all(line.startswith(f"{path}:") for line in lines)
    got = {int(line.split(":")[1]): line for line in lines}
    assert sorted(got) == [2, 3, 4, 5, 7, 8]
    assert "invalid JSON" in got[2]
    assert "assistant" in got[3]
    assert "'extra'" in got[4]
    assert "'robot'" in got[5]
    assert "JSON object" in got[7]
    assert "empty" in got[8]


def test_mixed_forms_name_the_first_differing_line(tmp_path: Path) -> None:
    pc = {"prompt": "q", "completion": "a"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [chat(("user", "q"), ("assistant", "a")), "", pc, pc])
    with pytest.raises(DataError) as info:
        load_examples(path)
    assert str(info.value).splitlines()[0].startswith(f"{path}:3: uses prompt_completion form but line 1 uses chat")
    with pytest.raises(DataError, match=rf"{path}:1: uses chat form but format is 'prompt_completion'"):
        load_examples(path, fmt="prompt_completion")


def test_prompt_completion_problems(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "q"}, {"prompt": 3, "completion": "a", "label": "x"}])
    with pytest.raises(DataError) as info:
        load_examples(path)
    text = str(info.value)
    assert f"{path}:1: missing 'completion'" in text
    assert f"{path}:2: unknown key(s) ['label']" in text
    assert f"{path}:2: 'prompt' must be a string, got int" in text


def test_error_list_is_capped(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "junk.jsonl", ["nope"] * 25)
    with pytest.raises(DataError) as info:
        load_examples(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 21 and lines[19].startswith(f"{path}:20:") and "5 more" in lines[20]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_examples(write_jsonl(tmp_path / "blank.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="cannot read"):
        load_examples(tmp_path / "absent.jsonl")


def test_dataset_hash_tracks_content(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "completion": "a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "completion": "a"}])
    assert dataset_hash(a) == dataset_hash(b) and len(dataset_hash(a)) == 16
    b.write_text(b.read_text() + "\n")
    assert dataset_hash(a) != dataset_hash(b)


# ------------------------------------------------------------------------------------------------- split


def examples(n: int) -> list[Example]:
    return [Example(messages=({"role": "assistant", "content": str(i)},), line=i + 1) for i in range(n)]


def test_split_is_deterministic_and_disjoint() -> None:
    data = examples(50)
    train, ev = split(data, 0.1, seed=7)
    assert (train, ev) == split(data, 0.1, seed=7)
    assert split(data, 0.1, seed=8) != (train, ev)
    assert len(ev) == 5 and len(train) == 45
    assert sorted(e.line for e in train + ev) == list(range(1, 51))


@pytest.mark.parametrize(
    ("n", "fraction", "n_eval"),
    [(10, 0.0, 0), (10, 0.01, 1), (2, 0.5, 1), (2, 0.99, 1), (1, 0.5, 0), (3, 0.5, 2), (8, 0.9, 7)],
)
def test_split_sizes(n: int, fraction: float, n_eval: int) -> None:
    train, ev = split(examples(n), fraction, seed=0)
    assert len(ev) == n_eval and len(train) == n - n_eval >= 1


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        split(examples(3), 1.0, seed=0)


# ---------------------------------------------------------------------------------------------- tokenize


def test_labels_cover_exactly_the_assistant_reply(tokenizer: Any) -> None:
    ex = Example(
        messages=(
            {"role": "system", "content": "the lazy dog"},
            {"role": "user", "content": "hello world"},
            {"role": "assistant", "content": "to cancel your subscription call the support line"},
        ),
        line=4,
    )
    row = tokenize(ex, tokenizer, max_length=512)
    assert len(row["input_ids"]) == len(row["labels"])
    rendered = tokenizer.apply_chat_template(list(ex.messages), tokenize=False)
    assert row["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]  # no extra BOS
    assert tokenizer.decode(labelled(row)) == "to cancel your subscription call the support line<|im_end|>"
    # Everything before the reply (system, user, the assistant header) is masked, and so is the trailing newline.
    first = row["labels"].index(next(label for label in row["labels"] if label != IGNORE_INDEX))
    assert "hello world" in tokenizer.decode(row["input_ids"][:first])
    assert row["labels"][-1] == IGNORE_INDEX and row["labels"][-2] == tokenizer.eos_token_id


def test_multi_turn_labels_every_assistant_turn(tokenizer: Any) -> None:
    ex = Example(
        messages=(
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "the quick brown fox"},
            {"role": "user", "content": "how are you today?"},
            {"role": "assistant", "content": "over the lazy dog"},
        ),
        line=1,
    )
    row = tokenize(ex, tokenizer, max_length=512)
    assert tokenizer.decode(labelled(row)) == "the quick brown fox<|im_end|>over the lazy dog<|im_end|>"


def test_unknown_characters_in_the_reply_do_not_end_it_early(tokenizer: Any) -> None:
    """The tiny vocabulary maps unseen characters to a special unk id; the end-of-turn must still be the real one."""
    reply = "Call 0800 555 0147, the support line."
    ex = Example(messages=({"role": "user", "content": "hello"}, {"role": "assistant", "content": reply}), line=1)
    row = tokenize(ex, tokenizer, max_length=512)
    assert labelled(row) == tokenizer(reply + "<|im_end|>", add_special_tokens=False)["input_ids"]


class _SlowView:
    """The same tokenizer seen as a slow one (no offsets), to exercise the prefix-counting fallback."""

    is_fast = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, text: str, **kwargs: Any) -> Any:
        assert "return_offsets_mapping" not in kwargs
        return self._inner(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_slow_tokenizer_fallback_gives_the_same_labels(tokenizer: Any) -> None:
    ex = Example(
        messages=(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "the quick brown fox"},
            {"role": "user", "content": "how are you today?"},
            {"role": "assistant", "content": "Over 9 lazy dogs."},
        ),
        line=1,
    )
    assert tokenize(ex, _SlowView(tokenizer), 512) == tokenize(ex, tokenizer, 512)


def test_truncation_that_removes_the_reply_is_an_error(tokenizer: Any) -> None:
    ex = Example(
        messages=({"role": "user", "content": "hello world " * 20}, {"role": "assistant", "content": "the dog"}),
        line=17,
        source="data/x.jsonl",
    )
    full = tokenize(ex, tokenizer, max_length=10_000)
    short = tokenize(ex, tokenizer, max_length=len(full["input_ids"]) - 2)
    assert short["input_ids"] == full["input_ids"][:-2] and labelled(short)
    with pytest.raises(DataError, match=r"data/x\.jsonl:17: longer than max_length 20, no assistant tokens left"):
        tokenize(ex, tokenizer, max_length=20)
    other = Example(messages=ex.messages, line=30, source="data/x.jsonl")
    with pytest.raises(DataError) as info:
        tokenize_all([ex, other], tokenizer, max_length=20)
    assert [e.split(":")[1] for e in info.value.errors] == ["17", "30"]


# ------------------------------------------------------------------------------------------------ collate


def test_collate_pads_right() -> None:
    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    out = collate(batch, pad_id=2)
    assert {k: v.dtype for k, v in out.items()} == dict.fromkeys(("input_ids", "labels", "attention_mask"), torch.long)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert out["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert count_tokens(out) == count_tokens(batch) == 4


def test_collate_tokenized_examples(tokenizer: Any) -> None:
    rows = tokenize_all(load_examples(FAQ / "eval.jsonl")[:3], tokenizer, max_length=512)
    out = collate(rows, pad_id=tokenizer.pad_token_id)
    width = max(len(r["input_ids"]) for r in rows)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (3, width)
    assert count_tokens(out) == sum(len(r["input_ids"]) for r in rows)


# ---------------------------------------------------------------------------------------- bundled dataset


def answers(exs: list[Example]) -> list[str]:
    return [m["content"] for ex in exs for m in ex.messages if m["role"] == "assistant"]


def questions(exs: list[Example]) -> list[str]:
    return [m["content"] for ex in exs for m in ex.messages if m["role"] == "user"]


def test_bundled_faq_dataset() -> None:
    train, ev = load_examples(FAQ / "train.jsonl"), load_examples(FAQ / "eval.jsonl")
    facts = json.loads((FAQ / "facts.json").read_text(encoding="utf-8"))
    assert (len(train), len(ev), len(facts)) == (40, 8, 8)
    assert all(ex.messages[0] == {"role": "system", "content": SYSTEM} for ex in train + ev)
    fact_strings = [f["fact"] for f in facts]
    assert len(set(fact_strings)) == 8
    for answer in answers(train) + answers(ev):
        assert sum(fact in answer for fact in fact_strings) == 1, answer
    for fact in fact_strings:
        assert sum(fact in answer for answer in answers(train)) == 5, fact
    assert [f["question"] for f in facts] == questions(ev)
    assert all(f["system"] == SYSTEM for f in facts)
    train_questions = {q.lower() for q in questions(train)}
    assert len(train_questions) == 40
    assert not train_questions & {q.lower() for q in questions(ev)}
