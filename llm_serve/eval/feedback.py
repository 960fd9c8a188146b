"""Production feedback as slices of an evaluation: what users said about each variant's model, adapter and prompt.

`llm-serve eval --feedback` reads the endpoint's `/admin/usage?period=total` (an admin key) once,
before any row runs, and gives each variant the feedback of the traffic served by what that variant
was served by: the pool and adapter of `x-llm-serve-model` and the `name@version+hash` of
`x-llm-serve-prompt`. So an offline score and the users' verdict on the same prompt version sit side by
side, and a gate can hold either (`--gate escalation_rate=0.1`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from llm_serve.eval.metrics import FEEDBACK_METRICS
from llm_serve.eval.variants import UsageError

__all__ = ["FEEDBACK_METRICS", "feedback_metrics", "fetch_feedback"]


async def fetch_feedback(client: httpx.AsyncClient, base: str) -> list[dict[str, Any]]:
    """The endpoint's feedback summary rows; a usage error when the key may not read them."""
    root = base.removesuffix("/v1")
    try:
        resp = await client.get(f"{root}/admin/usage", params={"period": "total"})
    except httpx.HTTPError as exc:
        raise UsageError(f"--feedback: cannot read {root}/admin/usage: {exc}") from None
    if resp.status_code in (401, 403):
        raise UsageError(f"--feedback needs an admin key: {root}/admin/usage answered {resp.status_code}")
    if resp.status_code != 200:
        raise UsageError(f"--feedback: {root}/admin/usage answered {resp.status_code}: {resp.text[:200]}")
    rows = resp.json().get("feedback")
    if not isinstance(rows, list):
        raise UsageError(f"--feedback: {root}/admin/usage has no feedback summary (not an llm-serve endpoint?)")
    return rows


def _served(answers: Iterable[Any]) -> set[tuple[str, str | None, str | None]]:
    """(pool, adapter, prompt ref) of every answered row, as the ledger groups them."""
    out = set()
    for answer in answers:
        if not answer.ok or not answer.served_model:
            continue
        pool, _, adapter = answer.served_model.partition(":")
        out.add((pool, adapter or None, answer.prompt_ref))
    return out


def feedback_metrics(rows: list[dict[str, Any]], answers: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per business metric: the pooled value over the feedback rows of what served this variant, with `n`
    (how many requests said), in the shape of the summary's other metrics."""
    served = _served(answers)
    mine = [r for r in rows if (r.get("model"), r.get("adapter"), r.get("prompt")) in served]

    def pooled(value: str, weight: str) -> dict[str, Any] | None:
        parts = [(r[value], int(r.get(weight) or 0)) for r in mine if r.get(value) is not None]
        n = sum(w for _, w in parts)
        if not n:
            return None
        return {"mean": sum(v * w for v, w in parts) / n, "n": n, "failed": 0}

    out: dict[str, dict[str, Any]] = {}
    rated = sum(int(r.get("rated") or 0) for r in mine)
    if rated:
        out["satisfaction"] = {"mean": sum(int(r.get("thumbs_up") or 0) for r in mine) / rated, "n": rated, "failed": 0}
    for name, weight in (("task_completion_rate", "task_reported"), ("escalation_rate", "escalation_reported")):
        if (entry := pooled(name, weight)) is not None:
            out[name] = entry
    if (entry := pooled("mean_score", "scored")) is not None:
        out["feedback_score"] = entry
    return out
