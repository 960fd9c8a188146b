"""Fit the semantic cache's cross-encoder (router/pair_classifier.py) on the tuning split and ship it.

Only the tuning split is read (benchmarks/semantic_pairs.py); the held-out split is for
benchmarks/semantic_precision.py alone. The model is fitted on the tuning pairs of every writer but the
validation writers (VALIDATION: one writer of ordinary near misses and one asked for the subtlest ones)
and scored on theirs; the score threshold is the lowest at which their precision reaches
--target-precision. That model ships with that threshold: refitting on the validation writers too would
move the scores the threshold was read from (a cross-encoder's scores crowd near 1, so a small move
flips decisions).

Writers, not random pairs, are held back, because pairs of one writer resemble each other: grouped
cross-validation over the older verifier promised precision 0.99 and it reached 0.88 on new writers.

Each base question is also shown paired with itself (same: true). Why: the labelled near misses change one
word and the paraphrases reword, so without it the model learns that near-identical wording means a
different question, and scored a question against itself 0.13.

    .venv/bin/python benchmarks/train_pair_classifier.py [--epochs 4] [--target-precision 0.99]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.semantic_pairs import split  # noqa: E402
from benchmarks.train_semantic_verifier import threshold_for  # noqa: E402
from llm_serve.config import EmbedderConfig  # noqa: E402
from llm_serve.router.pair_classifier import HEAD_FILE, META_FILE, WEIGHTS_DIR  # noqa: E402

VALIDATION = ("part-3.jsonl", "part-7.jsonl")
SEED = 0
BATCH = 16
LEARNING_RATE = 5e-4
MAX_LENGTH = 96
# LoRA on every attention and feed-forward projection of the 6 layers: 338k trainable parameters.
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["query", "key", "value", "dense"]}


def encode(tokenizer: Any, firsts: list[str], seconds: list[str]) -> Any:
    return tokenizer(firsts, seconds, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")


def fit(pairs: list[dict[str, Any]], base_path: str, epochs: int) -> tuple[Any, Any, Any]:
    """(encoder with LoRA, head, tokenizer) trained on `pairs`; each batch is shown in a random order of
    its two questions, so the model cannot learn which side is the stored one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    encoder = get_peft_model(AutoModel.from_pretrained(base_path), LoraConfig(**LORA))
    head = torch.nn.Linear(encoder.config.hidden_size, 1)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.01)
    labels = torch.tensor([float(p["same"]) for p in pairs])
    started = time.monotonic()
    for epoch in range(epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        encoder.train()
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            swap = rng.random() < 0.5
            firsts = [pairs[j]["b" if swap else "a"] for j in idx]
            seconds = [pairs[j]["a" if swap else "b"] for j in idx]
            batch = tokenizer(
                firsts, seconds, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
            )
            logits = head(encoder(**batch).last_hidden_state[:, 0]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        elapsed = time.monotonic() - started
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(pairs):.3f} ({elapsed:.0f} s)", flush=True)
    encoder.eval()
    return encoder, head, tokenizer


def identities(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group's most frequent question paired with itself, labelled the same question."""
    by_group: dict[str, dict[str, int]] = {}
    for p in pairs:
        counts = by_group.setdefault(p["group"], {})
        for q in (p["a"], p["b"]):
            counts[q] = counts.get(q, 0) + 1
    out = []
    for group, counts in sorted(by_group.items()):
        question = max(sorted(counts), key=counts.__getitem__)
        out.append({"group": group, "a": question, "b": question, "same": True, "kind": "identity", "source": "-"})
    return out


def score(encoder: Any, head: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(pairs), 64):
            chunk = pairs[i : i + 64]
            a, b = [p["a"] for p in chunk], [p["b"] for p in chunk]
            probs = []
            for firsts, seconds in ((a, b), (b, a)):
                batch = tokenizer(
                    firsts, seconds, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                )
                probs.append(torch.sigmoid(head(encoder(**batch).last_hidden_state[:, 0]).squeeze(-1)))
            out.append(((probs[0] + probs[1]) / 2).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--target-precision", type=float, default=0.99)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file
    from sklearn.metrics import roc_auc_score

    from llm_serve.models.resolve import resolve_embedding_source

    source = EmbedderConfig().source
    base_path = resolve_embedding_source(source)
    tuning = split()["tuning"]
    train = [p for p in tuning if p["source"] not in VALIDATION]
    valid = [p for p in tuning if p["source"] in VALIDATION]
    train += identities(train)
    print(f"fitting on {len(train)} pairs; validating on {len(valid)} pairs of the writers of {', '.join(VALIDATION)}")
    encoder, head, tokenizer = fit(train, base_path, args.epochs)
    scores = score(encoder, head, tokenizer, valid)
    truth = np.array([bool(p["same"]) for p in valid])
    threshold, precision, recall = threshold_for(scores, truth, args.target_precision)
    auc = float(roc_auc_score(truth, scores))
    print(f"validation: ROC AUC {auc:.3f}; score >= {threshold:.4f}: precision {precision:.3f}, recall {recall:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(args.out))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(args.out / HEAD_FILE))
    (args.out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template: nothing in it is ours
    adapter = json.loads((args.out / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = source  # not this machine's path; the package resolves it
    (args.out / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
    meta = {
        "base": source,
        "max_length": MAX_LENGTH,
        "threshold": round(float(threshold), 6),
        "fitted": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pairs": len(train),
            "epochs": args.epochs,
            "lora": LORA,
            "learning_rate": LEARNING_RATE,
            "seed": SEED,
            "validation_writers": list(VALIDATION),
            "validation": {"pairs": len(valid), "roc_auc": round(auc, 4), "precision": precision, "recall": recall},
            "target_precision": args.target_precision,
            "command": "python benchmarks/train_pair_classifier.py " + " ".join(argv or sys.argv[1:]),
        },
    }
    (args.out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}: threshold {threshold:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
