"""`POST /v1/feedback` on the router's real path: tied to the ledger row and the key, merged, summed, counted."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fakes import A, B, auth, build, chat, keys_config
from tests.unit.test_telemetry import Recorder, recorded  # noqa: F401 - the fixture

FEEDBACK = "/v1/feedback"


async def ask(client: Any, key: str, request_id: str, model: str = A, **extra: Any) -> None:
    headers = {**auth(key), "x-request-id": request_id}
    resp = await client.post("/v1/chat/completions", json=chat(model, request_id, **extra), headers=headers)
    assert resp.status_code == 200, resp.text


async def test_feedback_is_tied_to_the_request_and_merged() -> None:
    client, _, _ = build(keys_config())
    async with client:
        await ask(client, "alice", "r1")
        resp = await client.post(FEEDBACK, json={"request_id": "r1", "rating": "up"}, headers=auth("alice"))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "feedback" and body["model"] == A and body["rating"] == "up"
        assert body["escalated"] is None and body["task_completed"] is None
        later = {"request_id": "r1", "escalated": True, "task_completed": False, "comment": "wrong part number"}
        merged = (await client.post(FEEDBACK, json=later, headers=auth("alice"))).json()
    assert merged["rating"] == "up" and merged["escalated"] is True and merged["task_completed"] is False
    assert merged["comment"] == "wrong part number" and merged["updated_at"] >= merged["created_at"]


async def test_only_the_requests_own_key_can_give_feedback() -> None:
    client, _, _ = build(keys_config())
    async with client:
        await ask(client, "alice", "shared-id")
        theirs = await client.post(FEEDBACK, json={"request_id": "shared-id", "rating": "down"}, headers=auth("bob"))
        unknown = await client.post(FEEDBACK, json={"request_id": "never-made", "rating": "down"}, headers=auth("bob"))
        anonymous = await client.post(FEEDBACK, json={"request_id": "shared-id", "rating": "down"})
    for resp in (theirs, unknown):
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "request_not_found"
        assert resp.json()["error"]["param"] == "request_id"
    # An unknown id and another tenant's read alike: ids cannot be probed across keys.
    assert theirs.json()["error"]["message"].replace("shared-id", "X") == unknown.json()["error"]["message"].replace(
        "never-made", "X"
    )
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"request_id": "r1"},
        {"request_id": "r1", "rating": "meh"},
        {"request_id": "r1", "score": 6},
        {"request_id": "r1", "score": 0},
        {"request_id": "r1", "escalated": "yes please"},
        {"request_id": "r 1", "rating": "up"},
        {"request_id": "r1", "rating": "up", "stars": 5},
        {"request_id": "r1", "comment": "x" * 2001},
        {"request_id": ["r1"], "rating": "up"},
    ],
)
async def test_malformed_feedback_is_a_422(body: dict[str, Any]) -> None:
    client, _, _ = build(keys_config())
    async with client:
        resp = await client.post(FEEDBACK, json=body, headers=auth("alice"))
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_value" and error["type"] == "invalid_request_error" and error["message"]


async def test_not_json_is_a_400() -> None:
    client, _, _ = build(keys_config())
    async with client:
        resp = await client.post(
            FEEDBACK, content=b"{nope", headers={**auth("alice"), "content-type": "application/json"}
        )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


async def test_business_metrics_per_model_and_prompt_in_usage_and_prometheus(recorded: dict[str, Recorder]) -> None:  # noqa: F811
    client, _, _ = build(keys_config(), prompts=True)
    prompt = {"name": "support-answer", "version": "2", "variables": {"question": "hi"}}
    async with client:
        for n, (rating, done, escalated) in enumerate(
            [("up", True, False), ("up", True, False), ("down", False, True)]
        ):
            await ask(client, "alice", f"a{n}")
            signal = {"request_id": f"a{n}", "rating": rating, "task_completed": done, "escalated": escalated}
            assert (await client.post(FEEDBACK, json=signal, headers=auth("alice"))).status_code == 200
        await ask(client, "bob", "b0", model=B, messages=[], prompt=prompt)
        b0 = {"request_id": "b0", "score": 2, "task_completed": False}
        assert (await client.post(FEEDBACK, json=b0, headers=auth("bob"))).status_code == 200
        usage = (await client.get("/admin/usage", params={"period": "day"}, headers=auth("admin"))).json()
        alice_only = (await client.get("/admin/usage", params={"key": "alice"}, headers=auth("admin"))).json()
    rows = {(r["model"], r["prompt"]): r for r in usage["feedback"]}
    plain = rows[(A, None)]
    assert plain["feedback"] == 3 and plain["thumbs_up"] == 2 and plain["thumbs_down"] == 1
    assert plain["satisfaction"] == pytest.approx(2 / 3) and plain["task_completion_rate"] == pytest.approx(2 / 3)
    assert plain["escalation_rate"] == pytest.approx(1 / 3) and plain["mean_score"] is None
    (versioned,) = [r for (m, p), r in rows.items() if m == B]
    assert versioned["prompt"].startswith("support-answer@2+") and versioned["mean_score"] == 2.0
    assert versioned["satisfaction"] is None and versioned["task_completion_rate"] == 0.0 and versioned["rated"] == 0
    assert [r["model"] for r in alice_only["feedback"]] == [A]
    signals = [(t["signal"], t["model"], t["prompt"]) for _, t in recorded["llm_serve_feedback"].values]
    assert signals.count(("thumbs_up", A, "")) == 2 and ("escalated", A, "") in signals
    assert ("task_not_completed", B, "support-answer@2") in signals  # name@version: the hash is no label
    assert recorded["llm_serve_feedback_score"].values == [(2, {"model": B})]
