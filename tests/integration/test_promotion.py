"""`llm-serve promote` through the live endpoint: SmolLM2 on vLLM, the bundled set, the alias seen by a second router.

Three rows keep each evaluation short; the gates are chosen so that one promotion passes whatever the
135M model says (a generous token ceiling) and one cannot (ROUGE-L of 0.99 against references).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "data" / "eval" / "nimbus_rag.jsonl"
ALIAS = "itest-support-bot"
PROMOTE_TIMEOUT_S = 900


def promote(stack, tmp_path: Path, *args: str):
    return stack.cli(
        "promote",
        ALIAS,
        *args,
        "--endpoint",
        stack.url,
        "--dataset",
        str(DATASET),
        "--limit",
        "3",
        "--max-tokens",
        "32",
        "--concurrency",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / f"run-{time.monotonic_ns()}"),
        timeout=PROMOTE_TIMEOUT_S,
    )


def served_by(url: str) -> httpx.Response:
    body = {
        "model": ALIAS,
        "messages": [],
        "prompt": {"name": "support-answer", "variables": {"question": "How long is the warranty?"}},
        "max_tokens": 8,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def test_a_promotion_passes_one_is_refused_and_every_router_follows(stack, second_router, tmp_path: Path) -> None:
    passed = promote(
        stack, tmp_path, "--to", stack.model, "--prompt", "support-answer@1", "--gate", "avg_tokens_used=100000"
    )
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr[-3000:]
    assert f"promoted: {ALIAS} -> {stack.model} [support-answer@1]" in passed.stderr
    assert "mlflow: decision logged" in passed.stderr

    refused = promote(
        stack, tmp_path, "--to", stack.model, "--prompt", "support-answer@2", "--gate", "rouge_score=0.99"
    )
    assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "gate failed: FAIL rouge_score" in refused.stderr and f"refused: {ALIAS} stays on" in refused.stderr
    # The refused run compared the candidate with the alias as it is: the alias served v1.
    assert f"{ALIAS} [support-answer]" in refused.stdout

    time.sleep(2)  # promotion.refresh_s (1 s) on every replica
    for url in (stack.url, second_router):
        resp = served_by(url)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-llm-serve-model"] == stack.model
        assert resp.headers["x-llm-serve-prompt"].startswith("support-answer@1+")

    current = httpx.get(f"{stack.url}/admin/aliases/{ALIAS}", timeout=30).json()
    assert current["current"]["prompt"] == "support-answer@1" and current["current"]["evaluation"]
    rolled = stack.cli("promote", ALIAS, "--rollback", "--endpoint", stack.url)
    # The first promotion in this suite's home may have had an earlier target (a previous run): either way, a
    # rollback with one target only is refused, with more it moves back.
    history = httpx.get(f"{stack.url}/admin/aliases/{ALIAS}", timeout=30).json()["history"]
    assert (rolled.returncode == 0 and history[0]["action"] == "rollback") or (
        rolled.returncode == 1 and len(history) == 1
    ), rolled.stdout + rolled.stderr
