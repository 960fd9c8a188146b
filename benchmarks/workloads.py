"""Request sets for the load generator: what a benchmark sends, independent of how fast it sends it.

- synthetic: prompts of a chosen length (in tokens, approximately: common English words are one
  token each for BPE tokenizers; the server's `usage` reports the exact count) and a fixed output
  length enforced with `ignore_eos`, optionally spread uniformly by `range_ratio` like `vllm bench
  serve --random-range-ratio`;
- conversations: the bundled multi-turn set (benchmarks/data/conversations.jsonl); every turn is a
  request carrying the conversation so far, so later turns have long shared prefixes, as chat does;
- rag: the questions of the bundled evaluation set, answered with retrieval from a collection (llm-serve
  only: the request carries llm-serve's `rag` extension);
- repeated: half the requests repeat an earlier one exactly (temperature 0), the shape a cache is for.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = ROOT / "benchmarks" / "data" / "conversations.jsonl"
RAG_QUESTIONS = ROOT / "data" / "eval" / "nimbus_rag.jsonl"
# Short, common words: one token each (with their leading space) for the usual BPE vocabularies.
_VOCABULARY = """
the of and to in is was he for it with as his on be at by had are but from or have an they which one you
were her all she there would their we him been has when who will more no if out so said what up its about
into than them can only other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years where much your way well
down should because each just those people how too little state good very make world still own see men
work long get here between both life being under never day same another know while last might us great
old year off come since against go came right used take three
"""
_WORDS = tuple(_VOCABULARY.split())


@dataclass
class RequestSpec:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float = 0.8
    ignore_eos: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    tag: str = ""


def synthetic(
    n: int, *, input_len: int = 64, max_tokens: int = 64, range_ratio: float = 0.0, seed: int = 0, **_: Any
) -> list[RequestSpec]:
    rng = random.Random(seed)

    def length(mean: int) -> int:
        spread = int(mean * range_ratio)
        return max(1, rng.randint(mean - spread, mean + spread))

    specs = []
    for i in range(n):
        # A distinct first word per request: no two prompts share a prefix by accident.
        words = [f"request{seed}x{i}"] + [rng.choice(_WORDS) for _ in range(length(input_len) - 1)]
        prompt = "Continue this text: " + " ".join(words)
        specs.append(RequestSpec([{"role": "user", "content": prompt}], length(max_tokens), tag="synthetic"))
    return specs


def conversations(
    n: int, *, max_tokens: int = 64, seed: int = 0, path: Path = CONVERSATIONS, **_: Any
) -> list[RequestSpec]:
    """Every turn of every conversation, in order, cycled up to `n` requests."""
    turns: list[RequestSpec] = []
    for line in path.read_text().splitlines():
        conv = json.loads(line)
        history: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful, concise assistant."}]
        for k, turn in enumerate(conv["turns"]):
            messages = [*history, {"role": "user", "content": turn["user"]}]
            turns.append(RequestSpec(messages, max_tokens, tag=f"conversation:{conv['id']}:{k + 1}"))
            history = [*messages, {"role": "assistant", "content": turn["assistant"]}]
    return [turns[i % len(turns)] for i in range(n)]


def rag(
    n: int,
    *,
    max_tokens: int = 64,
    collection: str = "nimbus_manual",
    seed: int = 0,
    path: Path = RAG_QUESTIONS,
    **_: Any,
) -> list[RequestSpec]:
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    rng.shuffle(questions)
    return [
        RequestSpec(
            [{"role": "user", "content": questions[i % len(questions)]}],
            max_tokens,
            temperature=0.0,
            ignore_eos=False,
            extra={"rag": {"collection": collection}},
            tag="rag",
        )
        for i in range(n)
    ]


def repeated(n: int, *, input_len: int = 64, max_tokens: int = 64, seed: int = 0, **_: Any) -> list[RequestSpec]:
    """n requests, half of them exact repeats of the other half (greedy, so a cache may answer them)."""
    distinct = synthetic((n + 1) // 2, input_len=input_len, max_tokens=max_tokens, seed=seed)
    specs = [RequestSpec(s.messages, s.max_tokens, temperature=0.0, tag="repeated") for s in distinct]
    rng = random.Random(seed)
    repeats = [specs[rng.randrange(len(specs))] for _ in range(n - len(specs))]
    # The first quarter is all first sights; after it, repeats mix with the remaining originals.
    second = specs[len(specs) // 2 :] + repeats
    rng.shuffle(second)
    return specs[: len(specs) // 2] + second


WORKLOADS = {"synthetic": synthetic, "conversations": conversations, "rag": rag, "repeated": repeated}


def build_workload(name: str, n: int, **kwargs: Any) -> list[RequestSpec]:
    return WORKLOADS[name](n, **kwargs)
