"""How good the toxicity score is, and what guardrails cost a request that passes them.

1. **toxicity** (`benchmarks/results/toxicity.json`): alt-profanity-check on the 150 labelled texts
   of data/safety/toxicity_labelled.jsonl (90 clean, among them hard negatives such as "the vacuum
   sucks up dust" and "kill the process"; 60 toxic, among them threats without abusive words). The
   threshold is tuned for F1 on the `tune` split only and reported on the `test` split it never saw
   (`heldout_*`), beside the package's own 0.5; ROC AUC on both. Also the per-text scoring time of
   llm-serve's scorer against the package's `predict_prob` (same numbers, ratio of medians).
2. **guardrail overhead** (`benchmarks/results/guardrail-overhead.json`): the router's real ASGI app
   in this process over a stand-in engine that answers at once (a 90-word answer; streamed in
   4-character chunks, ~140 events, as an engine streams tokens), so the only difference between the
   two systems is the guard itself: every policy check on (input and output toxicity and PII,
   redaction) against no policy. A live engine adds hundreds of ms of noise around a difference of
   a few ms, which is why the overhead is measured without one. Rounds alternate the order of the
   two, sequential requests (c=1); medians of the rounds' p50s.

    python benchmarks/guardrails.py [--rounds 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.report import RESULTS, ROOT, machine, metric, percentile, write_report

LABELLED = ROOT / "data" / "safety" / "toxicity_labelled.jsonl"
QUESTION = (
    "Hello, I bought a Cirrus 3 air purifier last spring and since last week the filter light keeps "
    "blinking even after I replaced the filter with a new original one. The fan also makes a rattling "
    "noise on the highest setting. What should I do, and is this covered by the warranty?"
)
ANSWER = (
    "Thank you for reaching out. The filter light blinks when the purifier does not detect the new filter: "
    "open the back cover, take the filter out and push it back in until both latches click, then hold the "
    "mode button for five seconds to reset the filter timer. A rattle on the highest setting usually means "
    "something touches the fan; unplug the purifier and check the air intake. The fan motor, the electronics "
    "and the housing are covered for 27 months from the date of purchase, so if the noise stays we will "
    "replace the unit."
)
STREAM_CHUNK = 4
OVERHEAD_NOTES = (
    "The router's ASGI app in-process over a stand-in engine that answers at once, c=1, {requests} requests per "
    "system per round, rounds alternating which goes first; medians of the rounds' p50s. Guarded: one policy with "
    "toxicity (block) and PII (redact) on input and output; the texts pass (nothing is blocked or redacted), which "
    "is the case the target is about. Streams: ~140 events of 4 characters each."
)


# ---- 1. the classifier -----------------------------------------------------------------------------------


def _counts(labels: list[bool], scores: list[float], threshold: float) -> dict[str, float]:
    tp = sum(1 for y, s in zip(labels, scores, strict=True) if y and s >= threshold)
    fp = sum(1 for y, s in zip(labels, scores, strict=True) if not y and s >= threshold)
    fn = sum(1 for y, s in zip(labels, scores, strict=True) if y and s < threshold)
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": (tp + tn) / len(labels), "fp": fp, "fn": fn}


def tune_threshold(labels: list[bool], scores: list[float]) -> float:
    """The threshold with the best F1 on these labels; ties go to the higher one (fewer false blocks).
    It is placed halfway between two neighbouring scores, so it does not sit on a tuning example."""
    ordered = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in itertools.pairwise(ordered)] or [0.5]
    return max(candidates, key=lambda t: (round(_counts(labels, scores, t)["f1"], 9), t))


def classifier(rounds: int) -> dict[str, Any]:
    from profanity_check import predict_prob
    from sklearn.metrics import roc_auc_score, roc_curve

    from llm_serve.safety.toxicity import ToxicityScorer

    rows = [json.loads(line) for line in LABELLED.read_text().splitlines() if line.strip()]
    scorer = ToxicityScorer()
    scores = scorer.scores([r["text"] for r in rows])
    split = {
        name: [(r["toxic"], s) for r, s in zip(rows, scores, strict=True) if r["split"] == name]
        for name in ("tune", "test")
    }
    tune_y, tune_s = [y for y, _ in split["tune"]], [s for _, s in split["tune"]]
    test_y, test_s = [y for y, _ in split["test"]], [s for _, s in split["test"]]
    threshold = tune_threshold(tune_y, tune_s)
    tuned, default = _counts(test_y, test_s, threshold), _counts(test_y, test_s, 0.5)

    # Per-text time, ours against the package's, alternating which goes first.
    ours_ms, theirs_ms = [], []
    texts = [r["text"] for r in rows]
    for n in range(rounds):
        for which in ("ours", "theirs") if n % 2 == 0 else ("theirs", "ours"):
            times = []
            for text in texts:
                start = time.perf_counter()
                scorer.scores([text]) if which == "ours" else predict_prob([text])
                times.append((time.perf_counter() - start) * 1000)
            (ours_ms if which == "ours" else theirs_ms).append(statistics.median(times))
    ours, theirs = statistics.median(ours_ms), statistics.median(theirs_ms)
    fpr, tpr, _ = roc_curve(test_y, test_s)
    misses = sorted(
        (
            {"text": r["text"], "toxic": r["toxic"], "score": s}
            for r, s in zip(rows, scores, strict=True)
            if r["split"] == "test" and (s >= threshold) != r["toxic"]
        ),
        key=lambda m: -abs(m["score"] - threshold),
    )
    return {
        "threshold": round(threshold, 4),
        "metrics": {
            "heldout_precision@tuned": metric(tuned["precision"], "ratio", True),
            "heldout_recall@tuned": metric(tuned["recall"], "ratio", True),
            "heldout_f1@tuned": metric(tuned["f1"], "ratio", True),
            "heldout_accuracy@tuned": metric(tuned["accuracy"], "ratio", True),
            "heldout_precision@0.5": metric(default["precision"], "ratio", True),
            "heldout_recall@0.5": metric(default["recall"], "ratio", True),
            "heldout_f1@0.5": metric(default["f1"], "ratio", True),
            "heldout_roc_auc": metric(roc_auc_score(test_y, test_s), "ratio", True),
            "tune_roc_auc": metric(roc_auc_score(tune_y, tune_s), "ratio", True),
            "score_ms_per_text/vs-predict-prob": metric(ours, "ms", False, "alt-profanity-check-predict-prob", theirs),
        },
        "sizes": {name: {"texts": len(v), "toxic": sum(y for y, _ in v)} for name, v in split.items()},
        "heldout_errors": misses,
        "roc": {"fpr": list(map(float, fpr)), "tpr": list(map(float, tpr))},
    }


# ---- 2. the overhead on the router path -------------------------------------------------------------------


def _router(guarded: bool) -> Any:
    import httpx

    from llm_serve.config import parse_config
    from llm_serve.router.ingress import Router
    from llm_serve.router.state import RouterState
    from tests.unit.fakes import FakeHandle, awaitable, chat_response, sse

    async def results(body: Any) -> Any:
        if not body.stream:
            yield chat_response(ANSWER, "m")
            return
        head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        pieces = [ANSWER[i : i + STREAM_CHUNK] for i in range(0, len(ANSWER), STREAM_CHUNK)]
        for n, piece in enumerate(pieces, 1):
            usage = {"prompt_tokens": 60, "completion_tokens": n, "total_tokens": 60 + n}
            yield [sse({**head, "choices": [{"index": 0, "delta": {"content": piece}}], "usage": usage})]
        usage = {"prompt_tokens": 60, "completion_tokens": len(pieces), "total_tokens": 60 + len(pieces)}
        yield [
            sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}),
            "data: [DONE]\n\n",
        ]

    def behaviour(name: str, body: Any) -> Any:
        return awaitable(None) if name == "check_health" else results(body)

    every = {"toxicity": {"action": "block"}, "pii": {"action": "redact"}}
    config = parse_config(
        {
            "home": tempfile.mkdtemp(prefix="llm-serve-bench-guardrails-"),  # its ledger, not the user's
            "models": [{"id": "m", "source": "x"}],
            "embedding_models": [],
            "cache": {"exact": {"enabled": False}},
            "telemetry": {"toxicity": {"enabled": False}},
            "guardrails": {
                "policies": {"all": {"input": every, "output": every}},
                "default": ["all"] if guarded else [],
            },
        }
    )
    router = Router(config, {"m": FakeHandle(behaviour)}, {}, None, state=RouterState(config))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=router.build_asgi_app()), base_url="http://bench")


async def _latencies(client: Any, stream: bool, n: int) -> list[float]:
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "stream": stream, "max_tokens": 200}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200 and (not stream or resp.text.endswith("[DONE]\n\n")), resp.text[:300]
        out.append((time.perf_counter() - start) * 1000)
    return out


async def overhead(rounds: int, requests: int) -> dict[str, Any]:
    clients = {"guarded": _router(True), "unguarded": _router(False)}
    p50: dict[tuple[str, bool], list[float]] = {(k, s): [] for k in clients for s in (False, True)}
    for stream in (False, True):
        for client in clients.values():  # warm-up: first requests pay imports and first-call costs
            await _latencies(client, stream, 20)
    for r in range(rounds):
        order = ("guarded", "unguarded") if r % 2 == 0 else ("unguarded", "guarded")
        for stream in (False, True):
            for name in order:
                values = await _latencies(clients[name], stream, requests)
                p50[(name, stream)].append(percentile(values, 50) or 0.0)
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{k[0]}{' stream' if k[1] else ''} p50 {v[-1]:.2f} ms" for k, v in p50.items()),
            flush=True,
        )
    for client in clients.values():
        await client.aclose()
    metrics: dict[str, Any] = {}
    for stream in (False, True):
        load = "stream" if stream else "json"
        on, off = statistics.median(p50[("guarded", stream)]), statistics.median(p50[("unguarded", stream)])
        metrics[f"latency_p50_ms@{load}/vs-no-guardrails"] = metric(on, "ms", False, "no-guardrails", off)
        metrics[f"added_p50_ms@{load}"] = metric(on - off, "ms", False)
    spread = {f"{k[0]}{'-stream' if k[1] else '-json'}": [round(v, 3) for v in vals] for k, vals in p50.items()}
    return {"metrics": metrics, "round_p50s_ms": spread}


def plot(roc: dict[str, Any], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(roc["fpr"], roc["tpr"], label="alt-profanity-check, held-out split")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel("false positive rate (clean texts flagged)")
    ax.set_ylabel("true positive rate (toxic texts caught)")
    ax.set_title(f"Toxicity on 75 held-out texts (threshold {threshold:.2f} tuned on the other 75)", fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    command = f"python benchmarks/guardrails.py --rounds {args.rounds} --requests {args.requests}"
    now = datetime.now(UTC).isoformat(timespec="seconds")

    print("toxicity classifier on the labelled set ...", flush=True)
    tox = classifier(args.rounds)
    write_report(
        {
            "scenario": "toxicity",
            "date": now,
            "machine": machine(),
            "command": command,
            "runs": args.rounds,
            "metrics": tox["metrics"],
            "threshold_tuned_on_tune_split": tox["threshold"],
            "sizes": tox["sizes"],
            "heldout_errors": tox["heldout_errors"],
            "notes": "Quality figures are deterministic (one scoring of each text); `runs` applies to the timing, "
            "the median over runs of each run's per-text median, the two scorers alternating first. heldout_* are "
            "on the test split at the threshold tuned on the tune split (max F1, ties to the higher threshold).",
        }
    )
    plot(tox["roc"], tox["threshold"], RESULTS / "toxicity.png")

    print("guardrail overhead on the router path ...", flush=True)
    over = asyncio.run(overhead(args.rounds, args.requests))
    write_report(
        {
            "scenario": "guardrail-overhead",
            "date": now,
            "machine": machine(),
            "command": command,
            "runs": args.rounds,
            "metrics": over["metrics"],
            "round_p50s_ms": over["round_p50s_ms"],
            "notes": OVERHEAD_NOTES.format(requests=args.requests),
        }
    )


if __name__ == "__main__":
    main()
