"""`llm-serve eval` end to end against a stand-in OpenAI-compatible endpoint served in-process.

The stand-in (FastAPI under uvicorn, on 127.0.0.1 and a free port) answers with fixed texts, so the
scores are known in advance: model `good` repeats the reference, `bad` says something else, the
`support-answer@2` prompt adds a sentence. With `rag` it returns `sources` with their `text`; one
question always fails with an OpenAI-style error body. As a judge (`judge`) it returns the exact JSON
ragas' faithfulness and answer-relevancy prompts parse; `judge-broken` answers prose.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from llm_serve.cli import main
from tests.unit.fakes import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "eval" / "nimbus_rag.jsonl"

WARRANTY_CTX = (
    "## Warranty\n\nEvery Cirrus 3 has a warranty of 27 months from the date of purchase. The warranty covers "
    "the fan\nmotor, the electronics and the housing. Filters are consumables and are not covered."
)
TURBO_CTX = (
    "## Modes\n\n- **Auto**: the fan speed follows the air quality sensor.\n- **Turbo**: the fan runs at full "
    "speed for 20 minutes, then returns to Auto."
)
E7_CTX = "| E7 | the fan motor is blocked | unplug the purifier and remove whatever blocks the fan |"
UNRELATED_CTX = (
    "## Refunds\n\nPurifiers returned within 30 days of delivery are refunded in full. Refunds reach your "
    "account within 8 working days."
)
FAIL_QUESTION = "Please fail this one."

ROWS = [
    {
        "id": "warranty",
        "question": "How long is the warranty on the Cirrus 3?",
        "reference": "The Cirrus 3 has a warranty of 27 months.",
        "must_contain": ["27 months"],
        "reference_contexts": [WARRANTY_CTX],
    },
    {
        "id": "turbo",
        "question": "How long does Turbo mode run?",
        "reference": "Turbo runs the fan at full speed for 20 minutes.",
        "reference_contexts": [TURBO_CTX],
    },
    {
        "id": "e7",
        "question": "What does error code E7 mean?",
        "reference": "The fan motor is blocked.",
        "must_contain": ["fan motor", "blocked"],
        "reference_contexts": [E7_CTX],
    },
]
PRIORITY_SCHEMA = {"type": "object", "required": ["priority"], "properties": {"priority": {"type": "string"}}}
JSON_ROWS = [  # the stand-in's `good` model repeats the reference: one valid, one against the schema
    {"id": "fire", "question": "Triage: it smells of smoke", "reference": '{"priority": "high"}', "expect_json": True},
    {
        "id": "typed",
        "question": "Triage: the fan is loud",
        "reference": '{"priority": 2}',
        "expect_json": PRIORITY_SCHEMA,
    },
]
REFERENCES = {r["question"]: r["reference"] for r in [*ROWS, *JSON_ROWS]}
# What the stand-in "retrieves": the right passage first for two questions, only a wrong one for turbo.
RETRIEVED = {
    ROWS[0]["question"]: [WARRANTY_CTX, UNRELATED_CTX],
    ROWS[1]["question"]: [UNRELATED_CTX],
    ROWS[2]["question"]: [E7_CTX],
}
V2_SUFFIX = " Is there anything else I can help with?"
ADMIN_KEY = "sk-standin-admin"
# What the stand-in's /admin/usage reports: users' feedback on two prompt versions served by `good`.
FEEDBACK_ROWS = [
    {
        "model": "good",
        "adapter": None,
        "prompt": "support-answer@1+0123abcd",
        "feedback": 5,
        "rated": 4,
        "thumbs_up": 3,
        "thumbs_down": 1,
        "satisfaction": 0.75,
        "mean_score": 4.0,
        "scored": 2,
        "task_completion_rate": 0.5,
        "task_reported": 2,
        "escalation_rate": 0.25,
        "escalation_reported": 4,
    },
    {
        "model": "good",
        "adapter": None,
        "prompt": "support-answer@2+0123abcd",
        "feedback": 1,
        "rated": 1,
        "thumbs_up": 0,
        "thumbs_down": 1,
        "satisfaction": 0.0,
        "mean_score": None,
        "scored": 0,
        "task_completion_rate": None,
        "task_reported": 0,
        "escalation_rate": 1.0,
        "escalation_reported": 1,
    },
]

# ---- the stand-in endpoint ---------------------------------------------------------------------------


@dataclass
class StandIn:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    def chat_bodies(self, model: str | None = None) -> list[dict[str, Any]]:
        return [
            r["body"]
            for r in self.requests
            if r["path"] == "/v1/chat/completions" and (model is None or r["body"].get("model") == model)
        ]


def _vector(text: str, dims: int = 64) -> list[float]:
    """Deterministic bag-of-words vector: equal texts embed equally, so cosine similarity is predictable."""
    vec = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        vec[int(hashlib.sha256(word.encode()).hexdigest(), 16) % dims] += 1.0
    return vec


def _judge_content(body: dict[str, Any]) -> str:
    """Canned judge answers in the shapes of ragas' output models (by the instruction in the prompt)."""
    if body["model"] == "judge-broken":
        return "I think the answer is pretty good overall!"
    text = "\n".join(str(m.get("content")) for m in body["messages"])
    if "judge the faithfulness of a series of statements" in text:
        return json.dumps(
            {
                "statements": [
                    {"statement": "The warranty lasts 27 months.", "reason": "stated in the context", "verdict": 1},
                    {"statement": "The warranty covers filters.", "reason": "filters are excluded", "verdict": 0},
                ]
            }
        )
    if "Break down each sentence" in text:
        return json.dumps({"statements": ["The warranty lasts 27 months.", "The warranty covers filters."]})
    if "Generate a question for the given answer" in text:
        return json.dumps({"question": ROWS[0]["question"], "noncommittal": 0})
    return "unexpected judge prompt"


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30, "cost_usd": 0.0015},
    }


def _make_app(state: StandIn) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "good", "object": "model"}]}

    @app.get("/admin/usage")
    async def usage(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {ADMIN_KEY}":
            return JSONResponse({"error": {"message": "not an admin key", "code": "admin_only"}}, status_code=403)
        return JSONResponse({"object": "usage", "data": [], "feedback": FEEDBACK_ROWS})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await request.json()
        state.requests.append({"path": "/v1/embeddings", "body": body, "headers": dict(request.headers)})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {
            "object": "list",
            "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": _vector(t)} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        state.requests.append({"path": "/v1/chat/completions", "body": body, "headers": dict(request.headers)})
        model = body["model"]
        if model.startswith("judge"):
            return JSONResponse(_completion(model, _judge_content(body)))
        prompt = body.get("prompt")
        question = prompt["variables"]["question"] if prompt else body["messages"][-1]["content"]
        if question == FAIL_QUESTION:
            error = {"message": "the engine fell over", "type": "server_error", "param": None, "code": "engine_error"}
            return JSONResponse({"error": error}, status_code=500)
        answer = REFERENCES[question] if model in ("good", "base:adapter") else "I am not sure, sorry."
        headers = {"x-llm-serve-model": model}
        if prompt:
            headers["x-llm-serve-prompt"] = f"{prompt['name']}@{prompt.get('version')}+0123abcd"
            if prompt.get("version") == "2":
                answer += V2_SUFFIX
        payload = _completion(model, answer)
        if body.get("rag"):
            payload["sources"] = [
                {"doc_id": "d", "source": "manual.md", "chunk": i, "score": 0.5 - i / 10}
                | ({"text": text} if body["rag"].get("include_text") else {})
                for i, text in enumerate(RETRIEVED.get(question, []))
            ]
        return JSONResponse(payload, headers=headers)

    return app


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    state = StandIn(url="")
    with serve_in_thread(_make_app(state)) as url:
        state.url = url
        yield state


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLM_SERVE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _tracking_store(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run here logs to one module store (created once: a new SQLite store costs ~2 s), never ~/.llm-serve."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.delenv("LLM_SERVE_CONFIG", raising=False)


# ---- helpers -----------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "set.jsonl", ROWS)


def run(stand_in: StandIn, dataset: Path, out: Path, *extra: str, model: str = "good") -> int:
    return main(
        [
            "eval",
            "--dataset",
            str(dataset),
            "--endpoint",
            stand_in.url,
            "--model",
            model,
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )


def results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def means(data: dict[str, Any], variant: int = 0) -> dict[str, float | None]:
    return {m: v["mean"] for m, v in data["variants"][variant]["summary"]["metrics"].items()}


# ---- dataset -----------------------------------------------------------------------------------------


def test_bundled_dataset_is_valid_and_quotes_the_manual() -> None:
    from llm_serve.eval import load_dataset
    from llm_serve.rag.loaders import load

    rows = load_dataset(BUNDLED)
    assert 12 <= len(rows) <= 16 and len({r.id for r in rows}) == len(rows)
    manual = "\n".join(load(p).text for p in sorted((ROOT / "data" / "manual").iterdir()))
    for row in rows:
        assert row.reference and row.reference_contexts and row.must_contain, row.id
        assert all(s in row.reference for s in row.must_contain), row.id
        for passage in row.reference_contexts:  # copied, not paraphrased: the context metrics compare strings
            assert passage in manual, (row.id, passage[:60])


def test_every_bad_line_is_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llm_serve.eval import DatasetError, load_dataset

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            [
                json.dumps({"question": "fine", "reference": "ok"}),
                "{not json",
                json.dumps({"reference": "no question"}),
                json.dumps({"question": "q", "reference_contexts": "not a list", "colour": 1}),
                json.dumps(["a", "list"]),
                json.dumps({"id": "dup", "question": "a"}),
                json.dumps({"id": "dup", "question": "b"}),
                json.dumps({"question": "c", "variables": []}),
            ]
        )
        + "\n"
    )
    with pytest.raises(DatasetError) as info:
        load_dataset(bad)
    message = str(info.value)
    for line in (2, 3, 4, 5, 7, 8):
        assert f"{bad}:{line}: " in message
    assert f"{bad}:1:" not in message and f"{bad}:6:" not in message
    assert "unknown key(s) ['colour']" in message and "duplicate id 'dup' (first on line 6)" in message
    assert "'variables' must be an object, got list" in message

    many = write_rows(tmp_path / "many.jsonl", [{"reference": "x"}] * 25)
    with pytest.raises(DatasetError) as info:
        load_dataset(many)
    assert len(info.value.errors) == 21 and info.value.errors[-1].endswith("and 5 more error(s) not shown")

    assert main(["eval", "--dataset", str(bad), "--endpoint", "http://127.0.0.1:9", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: invalid JSON" in err and "Traceback" not in err


def test_row_variables_default_to_the_question() -> None:
    from llm_serve.eval import EvalRow

    assert EvalRow(line=1, id="1", question="Hi?").prompt_variables() == {"question": "Hi?"}
    row = EvalRow(line=1, id="1", question="Hi?", variables={"ticket": "smoke!"})
    assert row.prompt_variables() == {"ticket": "smoke!"}


# ---- parsing -----------------------------------------------------------------------------------------


def test_variant_specs_and_endpoints() -> None:
    from llm_serve.eval.client import api_base
    from llm_serve.eval.variants import PromptRef, UsageError, build_variants, parse_compare

    primary, *others = build_variants(
        "m1", "support-answer@1", ["model=m2", "prompt=support-answer@alias:staging", "base:adapter", "prompt="]
    )
    assert primary.prompt == PromptRef("support-answer", version="1")
    assert [(v.model, v.prompt.ref if v.prompt else None) for v in others] == [
        ("m2", "support-answer@1"),
        ("m1", "support-answer@alias:staging"),
        ("base:adapter", "support-answer@1"),
        ("m1", None),
    ]
    assert PromptRef.parse("support-answer").payload({"question": "q"}) == {
        "name": "support-answer",
        "variables": {"question": "q"},
    }
    assert PromptRef.parse("p@alias:prod").payload({})["alias"] == "prod"
    assert parse_compare("model=m3,prompt=p@2", primary).label == "m3 [p@2]"
    for bad in ("colour=red", "model=", "prompt=p@", "prompt=@1", "model=m1,prompt=support-answer@1"):
        with pytest.raises(UsageError):
            build_variants("m1", "support-answer@1", [bad])
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert api_base(url) == "http://h:8000/v1"
    with pytest.raises(UsageError):
        api_base("h:8000")


# ---- running and scoring -----------------------------------------------------------------------------


def test_perfect_answers_score_high_and_wrong_ones_low(
    stand_in: StandIn, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert run(stand_in, dataset, out, "--compare", "bad", "--max-tokens", "64") == 0
    data = results(out)
    good, bad = means(data, 0), means(data, 1)
    assert good["exact_match"] == 1.0 and good["rouge_score"] > 0.99 and good["string_present"] == 1.0
    assert good["bleu_score"] > 0.9 and good["chrf_score"] > 0.9
    assert bad["exact_match"] == 0.0 and bad["string_present"] == 0.0
    assert bad["rouge_score"] < 0.5 and bad["chrf_score"] < good["chrf_score"]
    assert "context_recall" not in good  # no --rag: nothing retrieved to score
    assert data["metrics"] == [
        "rouge_score",
        "bleu_score",
        "chrf_score",
        "exact_match",
        "string_present",
        "toxicity",
        "avg_response_time_s",
        "avg_tokens_used",
    ]
    assert good["avg_tokens_used"] == 30 and 0 < good["avg_response_time_s"] < 5
    assert good["toxicity"] < 0.2 and "hallucination_rate" not in good  # nothing retrieved: nothing to check

    summary = data["variants"][0]["summary"]
    assert summary["rows"] == summary["answered"] == 3 and summary["failed"] == 0
    assert summary["cost_usd"] == pytest.approx(0.0045) and summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"]
    row = data["variants"][0]["rows"][0]
    assert row["answer"] == ROWS[0]["reference"] and row["served_model"] == "good"
    assert row["usage"]["completion_tokens"] == 10 and row["scores"]["exact_match"] == 1.0

    bodies = stand_in.chat_bodies("bad")
    assert sorted(b["messages"][0]["content"] for b in bodies[-3:]) == sorted(r["question"] for r in ROWS)
    for body in bodies[-3:]:
        assert body["temperature"] == 0 and body["max_tokens"] == 64 and "rag" not in body and "prompt" not in body
        assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1

    markdown = (out / "results.md").read_text()
    stdout = capsys.readouterr().out
    assert markdown in stdout
    header = next(line for line in markdown.splitlines() if line.startswith("| metric"))
    assert header == "| metric | good | bad | Δ bad |"
    exact = next(line for line in markdown.splitlines() if line.startswith("| exact_match"))
    assert exact == "| exact_match | 1.000 (n=3) | 0.000 (n=3) | -1.000 |"


def test_rag_computes_context_metrics(stand_in: StandIn, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(stand_in, dataset, out, "--rag", "nimbus_manual") == 0
    data = results(out)
    body = stand_in.chat_bodies("good")[-1]
    assert body["rag"] == {"collection": "nimbus_manual", "include_text": True}
    rows = {r["id"]: r for r in data["variants"][0]["rows"]}
    assert rows["warranty"]["retrieved_contexts"] == [WARRANTY_CTX, UNRELATED_CTX]
    assert "text" not in rows["warranty"]["sources"][0]  # kept once, in retrieved_contexts
    assert rows["warranty"]["scores"]["context_recall"] == 1.0
    assert rows["warranty"]["scores"]["context_precision"] == 1.0  # the right passage ranked first
    assert rows["turbo"]["scores"]["context_recall"] == 0.0 and rows["turbo"]["scores"]["context_precision"] < 0.01
    assert rows["e7"]["scores"]["context_recall"] == 1.0
    got = means(data)
    assert got["context_recall"] == pytest.approx(2 / 3) and 0 < got["context_precision"] < 1
    assert "context_precision" in data["metrics"] and "context_recall" in data["metrics"]


def test_prompt_variants_side_by_side(stand_in: StandIn, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = run(
        stand_in,
        dataset,
        out,
        "--prompt",
        "support-answer@1",
        "--compare",
        "prompt=support-answer@2",
        "--compare",
        "base:adapter",
    )
    assert code == 0
    data = results(out)
    labels = [v["label"] for v in data["variants"]]
    assert labels == ["good [support-answer@1]", "good [support-answer@2]", "base:adapter [support-answer@1]"]
    bodies = [b for b in stand_in.chat_bodies() if b.get("prompt", {}).get("version") == "2"]
    assert bodies and bodies[-1]["messages"] == []
    assert bodies[-1]["prompt"] == {
        "name": "support-answer",
        "version": "2",
        "variables": {"question": ROWS[2]["question"]},
    }
    assert data["variants"][1]["rows"][0]["prompt_ref"] == "support-answer@2+0123abcd"
    v1, v2 = means(data, 0), means(data, 1)
    assert v1["exact_match"] == 1.0 and v2["exact_match"] == 0.0 and v2["string_present"] == 1.0
    assert v2["rouge_score"] < v1["rouge_score"]
    table = (out / "results.md").read_text()
    assert "| Δ good [support-answer@2] | Δ base:adapter [support-answer@1] |" in table
    assert "| exact_match | 1.000 (n=3) | 0.000 (n=3) | 1.000 (n=3) | -1.000 | +0.000 |" in table


def test_min_gates_decide_the_exit_code(
    stand_in: StandIn, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stand_in, dataset, tmp_path / "a", "--min", "rouge_score=0.9", "--min", "exact_match=1") == 0
    assert "PASS rouge_score" in (tmp_path / "a" / "results.md").read_text()

    capsys.readouterr()
    assert run(stand_in, dataset, tmp_path / "b", "--min", "rouge_score=0.9", model="bad") == 1
    err = capsys.readouterr().err
    assert "gate failed: FAIL rouge_score = " in err and "< 0.9 on bad" in err
    assert results(tmp_path / "b")["gates"][0]["passed"] is False and results(tmp_path / "b")["exit_code"] == 1

    # A typo is refused before any request; a real metric this run did not compute, after it.
    before = len(stand_in.requests)
    assert run(stand_in, dataset, tmp_path / "c", "--min", "rogue_score=0.5") == 2
    assert len(stand_in.requests) == before
    assert "unknown metric(s) in gates: rogue_score" in capsys.readouterr().err
    assert run(stand_in, dataset, tmp_path / "d", "--min", "context_recall=0.5") == 2
    err = capsys.readouterr().err
    assert "not computed in this run: context_recall" in err and "available: rouge_score, bleu_score" in err
    assert run(stand_in, dataset, tmp_path / "e", "--min", "rouge_score") == 2


def test_failed_rows_are_counted_against_max_errors(
    stand_in: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_file = write_rows(tmp_path / "set.jsonl", [*ROWS, {"id": "boom", "question": FAIL_QUESTION, "reference": "x"}])
    assert run(stand_in, data_file, tmp_path / "a") == 1
    captured = capsys.readouterr()
    assert "1 of 4 row(s) failed on good (--max-errors 0)" in captured.err
    assert "row boom (line 4) on good: HTTP 500 server_error/engine_error: the engine fell over" in captured.out
    data = results(tmp_path / "a")
    summary = data["variants"][0]["summary"]
    assert summary["failed"] == 1 and summary["answered"] == 3 and summary["metrics"]["exact_match"]["n"] == 3
    boom = data["variants"][0]["rows"][3]
    assert boom["error"] == {
        "status": 500,
        "type": "server_error",
        "code": "engine_error",
        "message": "the engine fell over",
    }
    assert boom["scores"] == {} and boom["answer"] is None
    assert run(stand_in, data_file, tmp_path / "b", "--max-errors", "1") == 0


def test_unreachable_endpoint_exits_2(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the default eval-results/ would go
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["eval", "--dataset", str(dataset), "--endpoint", f"http://127.0.0.1:{port}", "--model", "m"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot reach the endpoint at http://127.0.0.1:{port}/v1" in err and "Traceback" not in err
    assert not (tmp_path / "eval-results").exists()


def test_api_key_from_the_environment(
    stand_in: StandIn, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("LLM_SERVE_API_KEY", "sk-llm-serve")
    assert run(stand_in, dataset, tmp_path / "a", "--limit", "1") == 0
    assert stand_in.requests[-1]["headers"]["authorization"] == "Bearer sk-llm-serve"
    assert len(results(tmp_path / "a")["variants"][0]["rows"]) == 1
    assert run(stand_in, dataset, tmp_path / "b", "--limit", "1", "--api-key", "sk-flag") == 0
    assert stand_in.requests[-1]["headers"]["authorization"] == "Bearer sk-flag"


# ---- the LLM judge -----------------------------------------------------------------------------------


def test_judged_metrics_end_to_end(stand_in: StandIn, dataset: Path, tmp_path: Path) -> None:
    one_row = write_rows(tmp_path / "one.jsonl", ROWS[:1])
    out = tmp_path / "out"
    judge = ["--judge-endpoint", f"{stand_in.url}/v1", "--judge-model", "judge", "--judge-embedding-model", "emb"]
    judge += ["--judge-api-key", "sk-judge"]
    assert run(stand_in, one_row, out, "--rag", "nimbus_manual", *judge, "--min", "faithfulness=0.5") == 0
    data = results(out)
    got = means(data)
    assert got["faithfulness"] == pytest.approx(0.5)  # one of the two canned statements is supported
    assert got["answer_relevancy"] == pytest.approx(1.0)  # the regenerated question is the asked one
    assert data["judge"] == {"endpoint": f"{stand_in.url}/v1", "model": "judge", "embedding_model": "emb"}
    judge_calls = stand_in.chat_bodies("judge")
    assert judge_calls and all(b["response_format"]["type"] == "json_object" for b in judge_calls)
    judged = [r for r in stand_in.requests if r["body"].get("model") in ("judge", "emb")]
    assert {r["headers"]["authorization"] for r in judged} == {"Bearer sk-judge"}
    assert any(r["path"] == "/v1/embeddings" and r["body"]["model"] == "emb" for r in stand_in.requests)


def test_unparsable_judge_gives_nan_and_a_count(stand_in: StandIn, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    judge = ["--judge-endpoint", stand_in.url, "--judge-model", "judge-broken", "--judge-embedding-model", "emb"]
    assert run(stand_in, dataset, out, "--rag", "nimbus_manual", *judge) == 0
    data = results(out)
    metrics = data["variants"][0]["summary"]["metrics"]
    for name in ("faithfulness", "answer_relevancy"):
        assert metrics[name] == {"mean": None, "n": 0, "failed": 3}
    row = data["variants"][0]["rows"][0]
    assert row["scores"]["faithfulness"] is None and row["score_failures"]["faithfulness"]
    assert metrics["rouge_score"]["n"] == 3  # the other metrics are unaffected
    assert "| faithfulness | - (n=0, 3 failed) |" in (out / "results.md").read_text()
    assert run(stand_in, dataset, tmp_path / "gated", "--rag", "r", *judge, "--min", "faithfulness=0.1") == 1


def test_judge_flags_go_together(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["eval", "--dataset", str(dataset), "--endpoint", "http://x", "--model", "m", "--judge-model", "j"]) == 2
    )
    assert "go together" in capsys.readouterr().err


# ---- the seed's metrics, direction-aware gates, MLflow --------------------------------------------------


def test_seed_metrics_json_hallucination_and_operational(stand_in: StandIn, tmp_path: Path) -> None:
    data_file = write_rows(tmp_path / "set.jsonl", [*ROWS, *JSON_ROWS])
    out = tmp_path / "out"
    assert run(stand_in, data_file, out, "--rag", "nimbus_manual", "--compare", "bad") == 0
    data = results(out)
    good, bad = means(data, 0), means(data, 1)
    rows = {r["id"]: r["scores"] for r in data["variants"][0]["rows"]}
    # JSON: parsed and valid / parsed but against its schema; "I am not sure" parses as nothing.
    assert rows["fire"]["json_parse_success_rate"] == 1.0 and rows["typed"]["json_parse_success_rate"] == 0.0
    assert "json_parse_success_rate" not in rows["warranty"]  # not a JSON row
    assert good["json_parse_success_rate"] == 0.5 and bad["json_parse_success_rate"] == 0.0
    # Hallucination: turbo's answer is checked against an unrelated passage, the others against their own.
    assert rows["turbo"]["hallucination_rate"] == 1.0
    assert rows["warranty"]["hallucination_rate"] == 0.0 and rows["e7"]["hallucination_rate"] == 0.0
    summary = data["variants"][0]["summary"]["metrics"]
    assert summary["hallucination_rate"]["n"] == 3  # only the rows that retrieved something
    assert good["avg_tokens_used"] == 30.0 and good["avg_response_time_s"] > 0


def test_gates_have_a_direction(
    stand_in: StandIn, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # toxicity is a maximum by default: the same number passes as `--gate` and fails as `:min`.
    assert run(stand_in, dataset, tmp_path / "a", "--gate", "toxicity=0.5", "--max", "avg_tokens_used=64") == 0
    gates = results(tmp_path / "a")["gates"]
    assert gates == [
        {"metric": "avg_tokens_used", "max": 64.0, "value": 30.0, "passed": True},
        {"metric": "toxicity", "max": 0.5, "value": pytest.approx(gates[1]["value"]), "passed": True},
    ]
    capsys.readouterr()
    assert run(stand_in, dataset, tmp_path / "b", "--gate", "toxicity=0.5:min") == 1
    assert "gate failed: FAIL toxicity = " in capsys.readouterr().err
    assert run(stand_in, dataset, tmp_path / "c", "--max", "avg_tokens_used=10") == 1
    assert "> 10 on good" in capsys.readouterr().err
    before = len(stand_in.requests)
    for bad in (["--min", "toxicity=0.1:max"], ["--gate", "toxicity=0.1:most"], ["--max", "toxicity"]):
        assert run(stand_in, dataset, tmp_path / "d", *bad) == 2, bad
    assert len(stand_in.requests) == before


def test_expect_json_must_be_a_flag_or_a_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"question": "a", "expect_json": "yes"},
        {"question": "b", "expect_json": {"type": "no-such-type"}},
        {"question": "c", "expect_json": False},
    ]
    code = main(
        ["eval", "--dataset", str(write_rows(tmp_path / "s.jsonl", rows)), "--endpoint", "http://x", "--model", "m"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "s.jsonl:1: 'expect_json' must be true, false or a JSON Schema object, got str" in err
    assert "s.jsonl:2: 'expect_json' is not a valid JSON Schema" in err and "s.jsonl:3" not in err


def test_runs_are_logged_to_mlflow_and_read_back(stand_in: StandIn, mlflow_store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    data_file = write_rows(tmp_path / "set.jsonl", [*ROWS, *JSON_ROWS])
    out = tmp_path / "out"
    args = ["--rag", "nimbus_manual", "--prompt", "support-answer@1", "--compare", "base:adapter"]
    assert run(stand_in, data_file, out, *args, "--gate", "toxicity=0.5", "--run-name", "nightly") == 0
    data = results(out)
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("llm-serve-eval")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`llm_serve.kind` = 'eval' and attributes.run_name = 'nightly'"
    )
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dataset_sha256"] == data["dataset"]["sha256"]
    assert parent.data.params["dataset_rows"] == "5" and parent.data.params["rag_collection"] == "nimbus_manual"
    assert parent.data.params["gates"] == "toxicity<=0.5" and parent.data.metrics["exit_code"] == 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"results.json", "results.md"}

    children = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        order_by=["attributes.start_time"],
    )
    by_label = {c.data.tags["mlflow.runName"]: c for c in children}
    assert set(by_label) == {"good [support-answer@1]", "base:adapter [support-answer@1]"}
    primary, adapter = by_label["good [support-answer@1]"], by_label["base:adapter [support-answer@1]"]
    assert primary.data.params["prompt_requested"] == "support-answer@1"
    assert primary.data.params["prompt_served"] == "support-answer@1+0123abcd"  # what the server rendered
    assert primary.data.tags["llm_serve.primary"] == "true" and adapter.data.tags["llm_serve.primary"] == "false"
    assert adapter.data.params["base_model"] == "base" and adapter.data.params["adapter"] == "adapter"
    assert "adapter" not in primary.data.params  # a plain model id has none
    expected = {name: entry["mean"] for name, entry in data["variants"][0]["summary"]["metrics"].items()}
    for name in ("hallucination_rate", "json_parse_success_rate", "avg_response_time_s", "avg_tokens_used", "toxicity"):
        assert primary.data.metrics[name] == pytest.approx(expected[name]), name
    assert primary.data.metrics["cost_usd"] == pytest.approx(data["variants"][0]["summary"]["cost_usd"])


def test_no_tracking_and_an_unwritable_store(
    stand_in: StandIn, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stand_in, dataset, tmp_path / "a", "--no-tracking") == 0
    assert "mlflow" not in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    # The evaluation finished and its files are written: a broken store is a warning, not a failed run.
    assert run(stand_in, dataset, tmp_path / "b", "--tracking-uri", f"sqlite:///{blocker}/sub/mlflow.db") == 0
    assert "warning: not logged to MLflow" in capsys.readouterr().err
    assert (tmp_path / "b" / "results.json").is_file()


def test_feedback_slices_beside_the_offline_scores(
    stand_in: StandIn, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--prompt", "support-answer@1", "--compare", "prompt=support-answer@2", "--compare", "prompt="]
    out = tmp_path / "out"
    assert run(stand_in, dataset, out, *args, "--feedback", "--api-key", ADMIN_KEY) == 0
    data = results(out)
    v1, v2, plain = means(data, 0), means(data, 1), means(data, 2)
    assert v1["satisfaction"] == 0.75 and v1["task_completion_rate"] == 0.5 and v1["escalation_rate"] == 0.25
    assert v1["feedback_score"] == 4.0 and data["variants"][0]["summary"]["metrics"]["satisfaction"]["n"] == 4
    assert v2["satisfaction"] == 0.0 and v2["escalation_rate"] == 1.0 and "task_completion_rate" not in v2
    assert "satisfaction" not in plain  # nobody gave feedback on answers without a registry prompt
    assert any("users' feedback" in note for note in data["notes"])
    assert "| escalation_rate | 0.250 (n=4) | 1.000 (n=1) | - |" in (out / "results.md").read_text()
    # A gate on what users said, in its own sense (escalation_rate is a maximum).
    gated = tmp_path / "gated"
    assert (
        run(stand_in, dataset, gated, *args[:2], "--feedback", "--api-key", ADMIN_KEY, "--gate", "escalation_rate=0.2")
        == 1
    )
    assert "FAIL escalation_rate = 0.2500 > 0.2" in capsys.readouterr().err
    # Without an admin key: refused before any row runs.
    before = len(stand_in.requests)
    assert run(stand_in, dataset, tmp_path / "no", "--feedback") == 2
    assert "--feedback needs an admin key" in capsys.readouterr().err
    assert len(stand_in.chat_bodies()) == len(
        [r for r in stand_in.requests[:before] if r["path"] == "/v1/chat/completions"]
    )
