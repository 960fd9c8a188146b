"""RAG plane benchmarks, each against its baseline in the same run.

1. Retrieval at 10k chunks through the Milvus Lite server (HNSW): p50/p95 latency and recall@5,
   against exact brute-force search over the same vectors in NumPy.
2. /v1/embeddings throughput through the stack (HTTP -> router -> embedder deployment with Serve
   batching), against in-process sentence-transformers encoding batches of 32.
3. Latency breakdown of a RAG chat request (embed, search, generate) from the response's own timings.
4. Answer accuracy on the sample manual: questions whose answer is a fact only the manual has,
   answered with retrieval against the same model without it (exact fact present in the answer).

Starts the stack itself (benchmarks/configs/bench.yaml, its own ports), stops it at the end.

    .venv/bin/python benchmarks/rag.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS, machine, metric, percentile, write_report  # noqa: E402
from benchmarks.stack import BenchStack  # noqa: E402

SUBJECTS = [
    "the Cirrus 3",
    "the filter",
    "the fan",
    "the ring light",
    "the app",
    "the warranty",
    "the sensor",
    "the night mode",
    "the subscription",
    "the power adapter",
    "the back cover",
    "the timer",
]
VERBS = ["needs", "shows", "supports", "stops", "starts", "covers", "blocks", "resets", "reports", "measures"]
OBJECTS = [
    "a red light",
    "every 90 days",
    "the air quality",
    "2.4 GHz Wi-Fi",
    "error E7",
    "a full refund",
    "19 dB at night",
    "the serial number",
    "a 24 V supply",
    "the CF-3021 part",
    "twelve seconds",
    "the weekend schedule",
    "a factory reset",
    "the London office",
    "a flat repair fee",
]
CONTEXTS = [
    "after an update",
    "in small rooms",
    "when the cover is open",
    "during Turbo mode",
    "on weekdays",
    "for business customers",
    "in humid rooms",
    "after 27 months",
    "before the next delivery",
    "if the latch is loose",
    "while pairing",
    "in Auto mode",
]


def _log(message: str) -> None:
    print(f"[rag-bench] {message}", file=sys.stderr, flush=True)


def synthetic_chunks(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = [
            f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(CONTEXTS)}."
            for _ in range(3)
        ]
        out.append(f"Note {i}: " + " ".join(sentences))
    return out


def bench_retrieval(config: Any, uri: str, n_chunks: int, n_queries: int, top_k: int) -> dict[str, Any]:
    from llm_serve.rag.ingest import LocalEmbedder, embedder_config
    from llm_serve.rag.store import Chunk, VectorStore

    embedder = LocalEmbedder(embedder_config(config))
    texts = synthetic_chunks(n_chunks)
    _log(f"embedding {n_chunks} synthetic chunks")
    started = time.perf_counter()
    vectors = np.array(embedder.encode(texts), dtype=np.float32)
    _log(f"  {n_chunks / (time.perf_counter() - started):.0f} chunks/s")
    store = VectorStore(config.rag.milvus, uri)
    name = "bench_retrieval"
    if store.has_collection(name):
        store.drop_collection(name)
    store.ensure_collection(name, vectors.shape[1])
    _log("inserting")
    batch = 500
    for start in range(0, n_chunks, batch):
        doc = f"doc{start // batch}"
        rows = [
            Chunk(doc, "h", f"synthetic/{doc}.txt", i, -1, texts[start + i], vectors[start + i].tolist())
            for i in range(min(batch, n_chunks - start))
        ]
        store.replace_document(name, doc, rows)
    store.flush(name)
    assert store.count(name) == n_chunks
    queries = synthetic_chunks(n_queries, seed=1)
    qvecs = np.array(embedder.encode(queries), dtype=np.float32)
    # Warm-up so the first query does not pay for the index load.
    for q in qvecs[:5]:
        store.search(name, q.tolist(), top_k)
    ann_ms, exact_ms, recalls = [], [], []
    for q in qvecs:
        t0 = time.perf_counter()
        hits = store.search(name, q.tolist(), top_k)
        t1 = time.perf_counter()
        exact = np.argsort(-(vectors @ q))[:top_k]
        t2 = time.perf_counter()
        ann_ms.append((t1 - t0) * 1000)
        exact_ms.append((t2 - t1) * 1000)
        got = {int(h.doc_id.removeprefix("doc")) * batch + h.chunk_index for h in hits}
        recalls.append(len(got & set(exact.tolist())) / top_k)
    store.drop_collection(name)
    store.close()
    return {
        "ann_ms": ann_ms,
        "exact_ms": exact_ms,
        "recall": statistics.fmean(recalls),
        "n_chunks": n_chunks,
        "n_queries": n_queries,
    }


async def _post_many(url: str, bodies: list[dict], concurrency: int) -> float:
    import httpx

    async with httpx.AsyncClient(timeout=300) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> None:
            async with sem:
                resp = await client.post(url, json=body)
                resp.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - started


def bench_embeddings(config: Any, base_url: str, n_texts: int, batch: int, concurrency: int) -> dict[str, Any]:
    """Texts/s through HTTP in both wire formats (the openai SDK asks for base64 unless told otherwise)."""
    from llm_serve.rag.ingest import LocalEmbedder, embedder_config

    texts = synthetic_chunks(n_texts, seed=2)
    model_id = config.rag.embedding_model
    out: dict[str, Any] = {}
    for fmt in ("base64", "float"):
        bodies = [
            {"model": model_id, "input": texts[i : i + batch], "encoding_format": fmt} for i in range(0, n_texts, batch)
        ]
        asyncio.run(_post_many(f"{base_url}/v1/embeddings", bodies[:4], concurrency))  # warm-up
        out[f"http_{fmt}_texts_per_s"] = n_texts / asyncio.run(
            _post_many(f"{base_url}/v1/embeddings", bodies, concurrency)
        )
    local = LocalEmbedder(embedder_config(config))
    local.model.encode(texts[:batch], batch_size=batch)  # warm-up
    started = time.perf_counter()
    for i in range(0, n_texts, batch):
        local.model.encode(texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
    out["local_texts_per_s"] = n_texts / (time.perf_counter() - started)
    return out


def bench_rag_request(base_url: str, model: str, collection: str, n: int) -> dict[str, Any]:
    import httpx

    questions = [
        "How long is the warranty on the Cirrus 3?",
        "What does error code E7 mean?",
        "How do I do a factory reset?",
        "When is chat support open on Saturdays?",
    ]
    rows = []
    with httpx.Client(timeout=300) as client:
        for i in range(n):
            started = time.perf_counter()
            resp = client.post(
                f"{base_url}/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": questions[i % len(questions)]}],
                    "temperature": 0,
                    "max_tokens": 48,
                    "rag": {"collection": collection},
                },
            )
            total = (time.perf_counter() - started) * 1000
            resp.raise_for_status()
            body = resp.json()
            timings = body["rag"]["timings_ms"]
            rows.append(
                {
                    "total": total,
                    "embed": timings["embed"],
                    "search": timings["search"],
                    "generate_and_rest": total - timings["embed"] - timings["search"],
                    "completion_tokens": body["usage"]["completion_tokens"],
                }
            )
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# Questions about data/manual whose answers the base model cannot know, with the fact that must appear:
# ten distinct facts, each written in data/manual (tests/unit/test_rag_answer_set.py checks both), so the
# score counts facts found, not one fact asked three ways.
ANSWER_SET = [
    ("How long is the warranty on the Cirrus 3?", "27 months"),
    ("How much does a Filter Club delivery cost?", "24 euros"),
    ("How do I do a factory reset?", "12 seconds"),
    ("When is chat support open on Saturdays?", "10:00"),
    ("How often must the filter be replaced?", "90 days"),
    ("What is the phone number of support?", "7946 0321"),
    ("How much does a repair outside the warranty cost?", "45 pounds"),
    ("How large a room is the Cirrus 3 made for?", "48 square metres"),
    ("How loud is the Cirrus 3 in Night mode?", "19 dB"),
    ("Within how many days can I return the purifier for a full refund?", "30 days"),
]


def bench_answers(base_url: str, model: str, collection: str) -> dict[str, Any]:
    import httpx

    def answer(question: str, rag: bool) -> str:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 60,
        }
        if rag:
            body["rag"] = {"collection": collection}
        resp = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"]

    rows = [
        {"question": q, "fact": f, "with_rag": f in answer(q, True), "without_rag": f in answer(q, False)}
        for q, f in ANSWER_SET
    ]
    return {
        "with_rag": sum(r["with_rag"] for r in rows),
        "without_rag": sum(r["without_rag"] for r in rows),
        "total": len(rows),
        "rows": rows,
    }


def plot(retrieval: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, max(max(retrieval["ann_ms"]), max(retrieval["exact_ms"])), 40)
    ax.hist(retrieval["ann_ms"], bins=bins, alpha=0.7, label=f"Milvus Lite HNSW (recall@5 {retrieval['recall']:.3f})")
    ax.hist(retrieval["exact_ms"], bins=bins, alpha=0.7, label="NumPy exact (in process)")
    ax.set(xlabel="query latency (ms)", ylabel="queries", title=f"Top-5 search over {retrieval['n_chunks']} chunks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--embed-texts", type=int, default=1024)
    parser.add_argument("--rag-requests", type=int, default=12)
    args = parser.parse_args(argv)
    home = os.environ.get("LLM_SERVE_HOME", str(Path("~/.llm-serve").expanduser()))
    os.environ["LLM_SERVE_HOME"] = home
    env = {**os.environ}
    stack = BenchStack(env)
    config, base_url, cli = stack.config, stack.url, stack.cli
    _log("starting the stack")
    stack.start()
    try:
        from llm_serve.rag.milvus_server import milvus_uri

        retrieval = bench_retrieval(config, milvus_uri(config), args.chunks, args.queries, 5)
        _log(
            f"retrieval: ann p50 {percentile(retrieval['ann_ms'], 50):.1f} ms, exact p50 "
            f"{percentile(retrieval['exact_ms'], 50):.1f} ms, recall@5 {retrieval['recall']:.4f}"
        )
        embeddings = bench_embeddings(config, base_url, args.embed_texts, 32, 4)
        _log(f"embeddings: {json.dumps({k: round(v) for k, v in embeddings.items()})} texts/s")
        subprocess.run(
            [*cli, "ingest", str(ROOT / "data" / "manual"), "--collection", "bench_manual"],
            env=env,
            check=True,
            capture_output=True,
        )
        rag = bench_rag_request(base_url, config.models[0].id, "bench_manual", args.rag_requests)
        _log(f"rag request: {json.dumps({k: round(v, 1) for k, v in rag.items()})}")
        answers = bench_answers(base_url, config.models[0].id, "bench_manual")
        _log(
            f"answers: {answers['with_rag']}/{answers['total']} with retrieval, "
            f"{answers['without_rag']}/{answers['total']} without"
        )
    finally:
        stack.stop()
    report = {
        "scenario": "rag",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": "python benchmarks/rag.py " + " ".join(argv or sys.argv[1:]),
        "metrics": {
            "retrieval_p50_ms@10k": metric(
                percentile(retrieval["ann_ms"], 50),
                "ms",
                False,
                "numpy-exact-in-process",
                percentile(retrieval["exact_ms"], 50),
            ),
            "retrieval_p95_ms@10k": metric(
                percentile(retrieval["ann_ms"], 95),
                "ms",
                False,
                "numpy-exact-in-process",
                percentile(retrieval["exact_ms"], 95),
            ),
            "recall@5@10k": metric(retrieval["recall"], "fraction", True),
            "embeddings_texts_per_s@batch32": metric(
                embeddings["http_base64_texts_per_s"],
                "texts/s",
                True,
                "sentence-transformers-in-process",
                embeddings["local_texts_per_s"],
            ),
            "embeddings_float_json_texts_per_s@batch32": metric(
                embeddings["http_float_texts_per_s"],
                "texts/s",
                True,
                "sentence-transformers-in-process",
                embeddings["local_texts_per_s"],
            ),
            "rag_request_embed_ms_p50": metric(rag["embed"], "ms", False),
            "rag_request_search_ms_p50": metric(rag["search"], "ms", False),
            "rag_request_generate_ms_p50": metric(rag["generate_and_rest"], "ms", False),
            "rag_request_total_ms_p50": metric(rag["total"], "ms", False),
            "manual_fact_accuracy": metric(
                answers["with_rag"] / answers["total"],
                "fraction",
                True,
                "same-model-without-retrieval",
                max(answers["without_rag"], 0.5) / answers["total"],
            ),
        },
        "notes": (
            f"Retrieval: {retrieval['n_chunks']} synthetic manual-like chunks embedded with all-MiniLM-L6-v2, "
            f"{retrieval['n_queries']} queries, top 5, HNSW (M=16, efConstruction=200, ef=64) in the Milvus "
            "Lite server over gRPC on loopback against exact dot products in NumPy in process (no network "
            "hop: the baseline a store has to justify itself against). Embeddings: 1024 texts in requests of "
            "32, 4 in flight, through HTTP, router and the embedder deployment, as base64 (what the openai SDK "
            "asks for by default) and as JSON floats, against encode() of batches "
            f"of 32 in one process. RAG: median over {args.rag_requests} requests (greedy, at most 48 tokens); "
            "'generate' includes the router and HTTP. Accuracy: the fact must appear verbatim in the greedy "
            f"answer; per question (fact, with, without): "
            f"{[(r['fact'], r['with_rag'], r['without_rag']) for r in answers['rows']]}; the baseline value is "
            "floored at half a question so the ratio stays finite. One run."
        ),
    }
    write_report(report)
    plot(retrieval, RESULTS / "rag-retrieval.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
