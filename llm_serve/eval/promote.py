"""`llm-serve promote`: move a served alias to a candidate only when an evaluation through the live endpoint passes.

The candidate (`--to MODEL[:ADAPTER]`, `--prompt NAME@VERSION`) is the evaluation's primary variant, so
the gates judge it; the alias as it is now is the second column (its prompt pinned by the alias), so
the report shows what the move changes. Every gate must pass before the alias moves (PUT
/admin/aliases/ALIAS, which checks the target exists); the decision, promoted or refused, is a run in
MLflow's `llm-serve-promotions` experiment linked to the evaluation's run. `--rollback` points the
alias at its previous target. Exit codes follow `llm-serve eval`: 0 moved (or rolled back), 1 refused
by a gate (or nothing to roll back to), 2 the command could not run as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from llm_serve.eval.client import api_base, resolve_api_key
from llm_serve.eval.report import Gate, check_gate_names
from llm_serve.eval.runner import EXIT_FAILED, EXIT_OK, EXIT_USAGE, EvalOutcome, run_eval
from llm_serve.eval.settings import EvalOptions
from llm_serve.eval.variants import PromptRef, UsageError

BUNDLED_DATASET = Path(__file__).resolve().parents[2] / "data" / "eval" / "nimbus_rag.jsonl"
ADMIN_TIMEOUT_S = 30.0


class PromoteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str
    to: str | None = Field(None, description="The candidate: MODEL or MODEL:ADAPTER.")
    prompt: str | None = Field(None, description="The candidate's prompt version, NAME@VERSION.")
    gates: list[str] = Field(default_factory=list, description="Gate specs, as `llm-serve eval --gate`.")
    rollback: bool = False
    note: str | None = None
    eval: EvalOptions | None = Field(None, description="The evaluation's options (dataset, endpoint, ...).")
    endpoint: str = "http://127.0.0.1:8000"
    api_key: str | None = None


@dataclass
class PromotionOutcome:
    exit_code: int
    decision: str  # promoted | refused | rolled_back | unchanged
    alias: str
    current: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    evaluation: EvalOutcome | None = None
    messages: list[str] = field(default_factory=list)
    tracking_run: str | None = None


def _admin_client(endpoint: str, api_key: str | None) -> httpx.Client:
    root = api_base(endpoint).removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=root, headers=headers, timeout=ADMIN_TIMEOUT_S)


def _error(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]


def current_target(http: httpx.Client, alias: str) -> dict[str, Any] | None:
    try:
        resp = http.get(f"/admin/aliases/{alias}")
    except httpx.HTTPError as exc:
        raise UsageError(f"cannot reach {http.base_url}: {exc}") from None
    if resp.status_code == 404 and resp.json().get("error", {}).get("code") == "alias_not_found":
        return None
    if resp.status_code in (401, 403):
        raise UsageError(f"moving a served alias needs an admin key ({resp.status_code}: {_error(resp)})")
    if resp.status_code != 200:
        raise UsageError(f"{http.base_url}/admin/aliases/{alias} answered {resp.status_code}: {_error(resp)}")
    return resp.json()["current"]


def _comparison(alias: str, current: dict[str, Any] | None, prompt: str | None) -> list[str]:
    if current is None:
        return []
    if prompt:  # the same prompt by name: the alias pins the version it serves now
        return [f"model={alias},prompt={PromptRef.parse(prompt).name}"]
    return [f"model={alias},prompt="]


def promote(options: PromoteOptions) -> PromotionOutcome:
    api_key = resolve_api_key(options.api_key)
    with _admin_client(options.endpoint, api_key) as http:
        if options.rollback:
            return _rollback(http, options)
        if not options.to:
            raise UsageError("give the candidate with --to MODEL[:ADAPTER] (or --rollback)")
        if options.prompt is not None and PromptRef.parse(options.prompt).version is None:
            raise UsageError(f"--prompt {options.prompt!r}: a promotion pins a version, NAME@VERSION")
        gates = [Gate.parse(spec) for spec in options.gates]
        if not gates:
            raise UsageError("a promotion is gated by evaluation: give at least one --gate METRIC=VALUE[:min|:max]")
        check_gate_names(gates)
        current = current_target(http, options.alias)
        eval_options = options.eval or EvalOptions(dataset=BUNDLED_DATASET, endpoint=options.endpoint, model="-")
        eval_options = eval_options.model_copy(
            update={
                "endpoint": options.endpoint,
                "api_key": api_key,
                "model": options.to,
                "prompt": options.prompt,
                "compare": _comparison(options.alias, current, options.prompt),
                "gates": [g.spec for g in gates],
                "run_name": f"promote {options.alias} -> {options.to}"
                + (f" [{options.prompt}]" if options.prompt else ""),
            }
        )
        evaluation = run_eval(eval_options)
        outcome = PromotionOutcome(
            exit_code=evaluation.exit_code,
            decision="refused",
            alias=options.alias,
            previous=current,
            current=current,
            evaluation=evaluation,
            messages=list(evaluation.messages),
        )
        if evaluation.exit_code == EXIT_OK:
            body = {
                "model": options.to,
                "prompt": options.prompt,
                "note": options.note,
                "evaluation": evaluation.tracking_run,
                "expected": current["id"] if current else 0,  # refused (409) if another move came meanwhile
            }
            resp = http.put(f"/admin/aliases/{options.alias}", json={k: v for k, v in body.items() if v is not None})
            if resp.status_code != 200:
                outcome.exit_code, outcome.decision = EXIT_USAGE, "unchanged"
                outcome.messages.append(f"error: the alias was not moved: {resp.status_code}: {_error(resp)}")
            else:
                outcome.decision, outcome.current = "promoted", resp.json()["current"]
                outcome.messages.append(f"promoted: {options.alias} -> {outcome.current['target']}")
        elif evaluation.exit_code == EXIT_FAILED:
            was = current["target"] if current else "nothing"
            outcome.messages.append(f"refused: {options.alias} stays on {was}")
        outcome.tracking_run = _log_decision(options, outcome)
        return outcome


def _rollback(http: httpx.Client, options: PromoteOptions) -> PromotionOutcome:
    before = current_target(http, options.alias)
    if before is None:
        raise UsageError(f"no served alias {options.alias!r}")
    resp = http.post(f"/admin/aliases/{options.alias}/rollback")
    if resp.status_code == 409:
        outcome = PromotionOutcome(
            EXIT_FAILED, "unchanged", options.alias, before, before, messages=[f"error: {_error(resp)}"]
        )
    elif resp.status_code != 200:
        raise UsageError(f"rollback failed: {resp.status_code}: {_error(resp)}")
    else:
        now = resp.json()["current"]
        outcome = PromotionOutcome(
            EXIT_OK,
            "rolled_back",
            options.alias,
            now,
            before,
            messages=[f"rolled back: {options.alias} -> {now['target']}"],
        )
    outcome.tracking_run = _log_decision(options, outcome)
    return outcome


def _log_decision(options: PromoteOptions, outcome: PromotionOutcome) -> str | None:
    """The decision as an MLflow run beside the evaluation's; a store that cannot be written is a warning."""
    from llm_serve.config import load_config
    from llm_serve.tracking import Tracker

    evaluation = options.eval
    if evaluation is not None and not evaluation.tracking:
        return None
    try:
        config = load_config()
        if not config.tracking.enabled and (evaluation is None or evaluation.tracking_uri is None):
            return None
        tracker = Tracker.from_config(config, evaluation.tracking_uri if evaluation else None)
        run = tracker.start_run(
            config.tracking.promotion_experiment,
            f"{options.alias}: {outcome.decision}",
            tags={
                "llm_serve.kind": "promotion",
                "llm_serve.alias": options.alias,
                "llm_serve.decision": outcome.decision,
            },
        )
        gates = (outcome.evaluation.results.get("gates") if outcome.evaluation else None) or []
        tracker.log(
            run,
            params={
                "alias": options.alias,
                "decision": outcome.decision,
                "candidate": options.to,
                "candidate_prompt": options.prompt,
                "previous": (outcome.previous or {}).get("target"),
                "current": (outcome.current or {}).get("target"),
                "gates": ", ".join(options.gates) or None,
                "evaluation_run": outcome.evaluation.tracking_run if outcome.evaluation else None,
                "note": options.note,
            },
            metrics={
                "promoted": float(outcome.decision == "promoted"),
                **{f"gate.{g['metric']}": g["value"] for g in gates},
                **{f"gate.{g['metric']}.passed": float(g["passed"]) for g in gates},
            },
        )
        tracker.end(run)
        outcome.messages.append(f"mlflow: decision logged as run {run} in {config.tracking.promotion_experiment!r}")
        return run
    except Exception as exc:  # the alias has moved (or not) already: the record of it is best effort
        outcome.messages.append(f"warning: decision not logged to MLflow: {type(exc).__name__}: {exc}"[:400])
        return None
