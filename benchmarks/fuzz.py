"""Schema-driven fuzzing of a live llm-serve endpoint with schemathesis (shared by the integration test
and benchmarks/reliability.py).

Cases come from the endpoint's /openapi.json in both of schemathesis' modes: bodies that match the
schema and bodies that break it on purpose. Most generated `model` values are swapped for a served one
(`served_share`), so cases reach past model resolution into every stage and the engine. Each case is
one HTTP request with the given headers (a key whose caps keep generations short).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

OPENAI_ERROR_FIELDS = frozenset({"message", "type", "param", "code"})
ANTHROPIC_ERROR_FIELDS = frozenset({"message", "type"})
ANTHROPIC_PATHS = "/v1/messages"  # Anthropic's clients parse Anthropic's error shape: that API answers in it
# The fuzzing key's caps (its `limits`): each generated case is a short prompt and a few tokens, so
# hundreds of cases take minutes on a CPU. The integration test and the reliability bench both use them.
FUZZ_LIMITS = {
    "max_tokens": 4,
    "max_n": 2,
    "max_messages": 8,
    "max_prompt_tokens": 256,
    "max_embedding_inputs": 8,
    "max_embedding_input_chars": 2000,
}


@dataclass
class FuzzOutcome:
    cases: int = 0
    server_errors: int = 0  # responses with a 5xx status
    bad_errors: int = 0  # 4xx responses whose body is not the API's error shape (OpenAI's, or Anthropic's)
    hung: int = 0  # no answer within the timeout
    slowest_ms: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first few failures, for the report


def fuzz_endpoint(
    url: str,
    headers: dict[str, str],
    model: str,
    embedding_model: str,
    *,
    cases_per_operation: int,
    timeout_s: float,
    served_share: float = 0.85,
    seed: int = 13,
) -> FuzzOutcome:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.generation.update(modes=list(GenerationMode))
    out = FuzzOutcome()
    rng = random.Random(seed)

    def keep(example: dict[str, Any]) -> None:
        if len(out.examples) < 10:
            out.examples.append(example)

    def runner(operation: Any) -> Any:
        @given(case=operation.as_strategy())
        @settings(
            max_examples=cases_per_operation, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def run(case: Any) -> None:
            if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and rng.random() < served_share:
                case.body["model"] = embedding_model if operation.path.endswith("embeddings") else model
            started = time.monotonic()
            try:
                response = case.call(base_url=url, headers=headers, timeout=timeout_s)
            except Exception as exc:  # no answer in time, or a dropped connection
                out.hung += 1
                keep({"path": operation.path, "error": type(exc).__name__, "body": case.body})
                return
            out.cases += 1
            out.slowest_ms = max(out.slowest_ms, (time.monotonic() - started) * 1000)
            if response.status_code >= 500:
                out.server_errors += 1
                keep({"path": operation.path, "status": response.status_code, "text": response.text[:300]})
            elif response.status_code >= 400:
                try:
                    body = response.json()
                    if operation.path.startswith(ANTHROPIC_PATHS):
                        shaped = body["type"] == "error" and set(body["error"]) >= ANTHROPIC_ERROR_FIELDS
                    else:
                        shaped = set(body) == {"error"} and set(body["error"]) >= OPENAI_ERROR_FIELDS
                except (ValueError, KeyError, TypeError):
                    shaped = False
                if not shaped:
                    out.bad_errors += 1
                    keep({"path": operation.path, "status": response.status_code, "text": response.text[:300]})

        return run

    for result in schema.include(method="POST").get_all_operations():
        runner(result.ok())()
    return out
