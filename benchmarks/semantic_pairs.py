"""Labelled question pairs for the semantic cache: loading, the fixed tuning / held-out split, cosines.

The split is by question group (every pair about one base question lands on the same side), so the
held-out part asks about things the verifier never saw, not re-wordings of tuned questions. It is drawn
once by hashing each group id with a fixed seed, before anything is tuned, and is stable when groups are
added. The old 171 pairs (semantic_cache_pairs.jsonl), on which the lexical guard was built, are tuning
data only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EVAL_DIR = DATA / "semantic_cache_eval"
LEGACY = DATA / "semantic_cache_pairs.jsonl"
SPLIT_SEED = "semantic-cache-split-2026-12"
HELDOUT_SHARE = 0.5
SAME_KINDS = frozenset({"synonym", "reorder", "politeness", "typo", "question_word", "casual", "paraphrase"})


def load(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"a", "b", "same", "kind"} <= row.keys():
            raise ValueError(f"{path}:{i + 1}: a pair needs a, b, same and kind")
        row.setdefault("group", f"legacy-{i // 4:03d}")
        row["source"] = path.name
        rows.append(row)
    return rows


def side(group: str) -> str:
    digest = hashlib.sha256(f"{SPLIT_SEED}:{group}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_SHARE else "tuning"


def split(include_legacy: bool = True) -> dict[str, list[dict[str, Any]]]:
    """{"tuning": [...], "heldout": [...]}: the new set split by group; the legacy set is tuning only."""
    parts: dict[str, list[dict[str, Any]]] = {"tuning": [], "heldout": []}
    for path in sorted(EVAL_DIR.glob("*.jsonl")):
        for row in load(path):
            parts[side(row["group"])].append(row)
    if include_legacy:
        parts["tuning"].extend(load(LEGACY))
    return parts


def cosines(pairs: list[dict[str, Any]], source: str | None = None) -> np.ndarray:
    """Cosine per pair with the embedder's model in process (the same code `llm-serve cache calibrate` runs)."""
    sys.path.insert(0, str(ROOT))
    from llm_serve.config import EmbedderConfig
    from llm_serve.router.semantic_calibration import cosines as pair_cosines

    source = source or EmbedderConfig().source
    print(f"encoding the questions of {len(pairs)} pairs with {source}", flush=True)
    return np.array(pair_cosines(pairs, source))


def wilson(successes: int, total: int) -> tuple[float, float] | None:
    """The 95 % Wilson score interval (scipy's), which stays honest at small counts and at 0 or 1."""
    if total == 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(successes, total).proportion_ci(confidence_level=0.95, method="wilson")
    return round(float(ci.low), 4), round(float(ci.high), 4)
