"""Served aliases and `llm-serve promote`, against the router's real app (uvicorn on 127.0.0.1) over stand-in engines.

The stand-in pools answer "answer from model-a/b" with 6 tokens of usage, so a gate on
`avg_tokens_used` passes and one on `rouge_score` cannot: what decides a promotion is known in advance.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_serve.cli import main
from tests.unit.fakes import A, B, build_app, serve_in_thread

ROWS = [
    {"id": "warranty", "question": "How long is the warranty?", "reference": "27 months."},
    {"id": "turbo", "question": "How long does Turbo run?", "reference": "20 minutes."},
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, Any]]:
    app, engines, _ = build_app({"promotion": {"refresh_s": 0.05}}, prompts=True)
    dataset = tmp_path / "set.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with serve_in_thread(app, lifespan="on") as url:
        yield {"url": url, "engines": engines, "dataset": dataset, "tmp": tmp_path}


def promote(served: dict[str, Any], *args: str) -> int:
    out = served["tmp"] / f"run-{time.monotonic_ns()}"
    common = ["--endpoint", served["url"], "--dataset", str(served["dataset"]), "--no-progress", "--out", str(out)]
    return main(["promote", *args, *common])


def alias(served: dict[str, Any], name: str = "support-bot") -> dict[str, Any]:
    return httpx.get(f"{served['url']}/admin/aliases/{name}").json()


def ask(served: dict[str, Any], **body: Any) -> httpx.Response:
    payload = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(f"{served['url']}/v1/chat/completions", json=payload, timeout=30)


def test_a_promotion_that_passes_moves_the_alias_and_one_that_fails_does_not(
    served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask(served).status_code == 404  # no such alias yet
    assert (
        promote(served, "support-bot", "--to", A, "--prompt", "support-answer@1", "--gate", "avg_tokens_used=100") == 0
    )
    assert "promoted: support-bot -> model-a [support-answer@1]" in capsys.readouterr().err
    answered = ask(served, prompt={"name": "support-answer", "variables": {"question": "hi"}}, messages=[])
    assert answered.status_code == 200 and answered.headers["x-llm-serve-model"] == A
    assert answered.headers["x-llm-serve-prompt"].startswith("support-answer@1+")  # the alias pins the version
    explicit = ask(
        served, prompt={"name": "support-answer", "version": "2", "variables": {"question": "hi"}}, messages=[]
    )
    assert explicit.headers["x-llm-serve-prompt"].startswith("support-answer@2+")  # the client's own choice wins

    refused = promote(served, "support-bot", "--to", B, "--prompt", "support-answer@2", "--gate", "rouge_score=0.99")
    err = capsys.readouterr().err
    assert refused == 1 and "gate failed: FAIL rouge_score" in err and "refused: support-bot stays on model-a" in err
    assert alias(served)["current"]["model"] == A and ask(served).headers["x-llm-serve-model"] == A

    assert (
        promote(served, "support-bot", "--to", B, "--prompt", "support-answer@2", "--max", "avg_tokens_used=100") == 0
    )
    capsys.readouterr()
    time.sleep(0.1)  # past promotion.refresh_s: what every replica would see by now
    assert ask(served).headers["x-llm-serve-model"] == B
    assert main(["promote", "support-bot", "--rollback", "--endpoint", served["url"]]) == 0
    assert "rolled back: support-bot -> model-a [support-answer@1]" in capsys.readouterr().err
    history = alias(served)["history"]
    assert [(h["action"], h["model"], h["prompt"]) for h in history] == [
        ("rollback", A, "support-answer@1"),
        ("promote", B, "support-answer@2"),
        ("promote", A, "support-answer@1"),
    ]
    assert history[1]["evaluation"]  # the MLflow run of the evaluation that allowed it


def test_the_evaluation_compares_the_candidate_with_the_alias_as_it_is(served: dict[str, Any]) -> None:
    assert (
        promote(served, "support-bot", "--to", A, "--prompt", "support-answer@1", "--gate", "avg_tokens_used=100") == 0
    )
    out = served["tmp"] / "compare"
    args = ["support-bot", "--to", B, "--prompt", "support-answer@2", "--gate", "avg_tokens_used=100"]
    assert (
        main(
            [
                "promote",
                *args,
                "--endpoint",
                served["url"],
                "--dataset",
                str(served["dataset"]),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    candidate, current = data["variants"]
    assert candidate["label"] == "model-b [support-answer@2]" and current["label"] == "support-bot [support-answer]"
    assert {r["served_model"] for r in current["rows"]} == {A}
    assert all(r["prompt_ref"].startswith("support-answer@1+") for r in current["rows"])  # served as the alias pins it
    assert [g["metric"] for g in data["gates"]] == ["avg_tokens_used"]


def test_decisions_are_logged_to_mlflow(served: dict[str, Any], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["--tracking-uri", store]
    assert promote(served, "support-bot", "--to", A, "--gate", "avg_tokens_used=100", *base) == 0
    assert promote(served, "support-bot", "--to", B, "--gate", "rouge_score=0.99", *base) == 1
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("llm-serve-promotions")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.params["decision"] for r in runs] == ["promoted", "refused"]
    promoted, refused = runs
    assert promoted.data.params["current"] == A and refused.data.params["previous"] == A
    assert refused.data.metrics["gate.rouge_score.passed"] == 0.0 and refused.data.metrics["promoted"] == 0.0
    evaluation = client.get_run(promoted.data.params["evaluation_run"])
    assert (
        evaluation.data.tags["llm_serve.kind"] == "eval"
        and alias(served)["current"]["evaluation"] == evaluation.info.run_id
    )


def test_what_cannot_be_promoted(served: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert promote(served, "support-bot", "--to", A) == 2  # no gate: a move without evaluation is not a promotion
    assert "at least one --gate" in capsys.readouterr().err
    assert promote(served, "support-bot", "--to", A, "--prompt", "support-answer", "--gate", "rouge_score=0") == 2
    assert promote(served, "support-bot", "--to", A, "--gate", "rogue_score=0") == 2
    assert main(["promote", "support-bot", "--rollback", "--endpoint", served["url"]]) == 2  # nothing to roll back
    url = f"{served['url']}/admin/aliases"
    cases = [
        ("model-a", {"model": B}, 400),  # would shadow a model id
        ("bad name!", {"model": B}, 400),
        ("bot", {"model": "nope"}, 404),
        ("bot", {"model": A, "prompt": "support-answer@9"}, 404),
        ("bot", {"model": A, "prompt": "no-version"}, 422),
        ("bot", {"model": A, "colour": "red"}, 422),
        ("bot", {"model": A, "expected": 7}, 409),  # another move came since the one the caller evaluated against
    ]
    for name, body, status in cases:
        resp = httpx.put(f"{url}/{name}", json=body)
        assert resp.status_code == status, (name, body, resp.text)
        assert set(resp.json()) == {"error"}
    # An unknown candidate fails every row, so no gate can be judged: exit 2, nothing moved.
    capsys.readouterr()
    assert promote(served, "support-bot", "--to", "no-such-model", "--gate", "avg_tokens_used=100") == 2
    assert "not computed in this run: avg_tokens_used" in capsys.readouterr().err
    assert httpx.get(f"{url}/support-bot").status_code == 404


async def test_a_move_reaches_every_router_replica_within_the_refresh() -> None:
    """Two router replicas, each with its own state client, over one ledger database (as two nodes would be)."""
    apps = [build_app({"promotion": {"refresh_s": 0.3}})[0] for _ in range(2)]
    one, two = (httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://r") for a in apps)
    body = {"model": "support-bot", "messages": [{"role": "user", "content": "hi"}]}
    async with one, two:
        assert (await two.post("/v1/chat/completions", json=body)).status_code == 404  # replica two read the table
        assert (
            await one.put("/admin/aliases/support-bot", json={"model": B, "note": "canary done"})
        ).status_code == 200
        assert (await one.post("/v1/chat/completions", json=body)).headers["x-llm-serve-model"] == B  # at once
        time.sleep(0.35)
        moved = await two.post("/v1/chat/completions", json=body)
        assert moved.status_code == 200 and moved.headers["x-llm-serve-model"] == B
        listing = (await two.get("/admin/aliases")).json()["data"]
    assert [(a["alias"], a["target"], a["note"]) for a in listing] == [("support-bot", B, "canary done")]
