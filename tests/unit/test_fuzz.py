"""Schema-driven fuzzing of the router (stand-in engines): no input gets a 5xx, every error is OpenAI-shaped
(Anthropic-shaped on the Anthropic Messages routes).

schemathesis generates bodies from /openapi.json, valid ones and, in its negative mode, ones that
break the schema on purpose (wrong types, missing fields, out-of-range values). Most generated
`model` values are swapped for a served one, so the cases reach past model resolution into every
stage. The live-stack version is tests/integration/test_fuzz.py.
"""

from __future__ import annotations

import random
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from tests.unit.fakes import EMBED, A, build_app

# Built at import (schemathesis needs the app to collect): its home is set here, since the per-test home of
# conftest.py does not exist yet, and the developer's ~/.llm-serve must not get its ledger.
app, _engines, _state = build_app({"home": tempfile.mkdtemp(prefix="llm-serve-fuzz-")}, prompts=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(modes=list(GenerationMode))
SERVED_SHARE = 0.85
# Without Milvus (unit tests), a search is answered "store unavailable": the one 5xx allowed here.
NO_STORE = {"store_unavailable"}
rng = random.Random(0)


@schema.include(method="POST").parametrize()
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gets_a_server_error(case: schemathesis.Case) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str) and rng.random() < SERVED_SHARE:
        case.body["model"] = EMBED if case.path.endswith("embeddings") else A
    response = case.call()
    if response.status_code >= 400:
        body = response.json()
        if case.path.startswith("/v1/messages"):
            # Anthropic's clients parse Anthropic's error shape, so that API answers in it.
            assert body.get("type") == "error" and {"type", "message"} <= set(body["error"]), (body, case.method)
            assert response.status_code < 500, (response.text[:300], case.body)
            return
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
        assert response.status_code < 500 or body["error"]["code"] in NO_STORE, (response.text[:300], case.body)
