"""Schema-driven fuzzing of the live router with schemathesis: no 5xx, OpenAI-shaped errors, no hang.

The cases come from the tenant router's /openapi.json (valid bodies and, in the negative mode, bodies
that break the schema on purpose), sent over HTTP with a key whose caps keep each generation to a few
tokens of a short prompt (FUZZ_LIMITS in benchmarks/fuzz.py), so the run takes minutes on a CPU (benchmarks/fuzz.py).
"""

from __future__ import annotations

import pytest

from benchmarks.fuzz import fuzz_endpoint

pytestmark = pytest.mark.integration
CASES_PER_OPERATION = 40


def test_no_input_gets_a_server_error_or_a_hang(tenants) -> None:
    outcome = fuzz_endpoint(
        tenants.url,
        tenants.headers("fuzz"),
        tenants.model,
        "all-minilm-l6-v2",
        cases_per_operation=CASES_PER_OPERATION,
        timeout_s=120,
    )
    print(f"fuzzed {outcome.cases} cases, slowest {outcome.slowest_ms:.0f} ms")
    assert outcome.cases >= 2 * CASES_PER_OPERATION
    assert (outcome.server_errors, outcome.bad_errors, outcome.hung) == (0, 0, 0), outcome.examples
