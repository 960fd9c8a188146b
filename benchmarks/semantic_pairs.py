"""Labelled question pairs for the semantic cache: loading, the tuning / held-out split, cosines.

Held-out: benchmarks/data/semantic_cache_heldout/ (896 pairs, 112 base questions in 16 domains that the
tuning data does not cover), written by four helper agents who saw none of the code and none of the other
data, after the verifier had been designed, and scored once per verifier that ships. Tuning: everything
else, i.e. benchmarks/data/semantic_cache_eval/ (896 pairs; it was once split in halves by group, and its
held-out half was scored twice and its false hits read, so it is tuning data now) and the 171 older
pairs (semantic_cache_pairs.jsonl) on which the lexical guard was built. A pair's group (one base
question) never spans the two sides, since the two sets were written apart and their group ids differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
EVAL_DIR = DATA / "semantic_cache_eval"
HELDOUT_DIR = DATA / "semantic_cache_heldout"
LEGACY = DATA / "semantic_cache_pairs.jsonl"
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


def split(include_legacy: bool = True) -> dict[str, list[dict[str, Any]]]:
    """{"tuning": [...], "heldout": [...]}: the held-out directory, and everything else for tuning."""
    parts: dict[str, list[dict[str, Any]]] = {"tuning": [], "heldout": []}
    for side, directory in (("tuning", EVAL_DIR), ("heldout", HELDOUT_DIR)):
        for path in sorted(directory.glob("*.jsonl")):
            parts[side].extend(load(path))
    if include_legacy:
        parts["tuning"].extend(load(LEGACY))
    tuned, held = {p["group"] for p in parts["tuning"]}, {p["group"] for p in parts["heldout"]}
    if tuned & held:
        raise ValueError(f"groups on both sides: {sorted(tuned & held)[:5]}")
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
