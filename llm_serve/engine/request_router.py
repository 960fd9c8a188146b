"""Ray Serve LLM's prefix-cache-aware replica choice, without its hang on prompts that hold no text.

`PrefixCacheAffinityRouter` (Ray 2.60) computes `len(matched_text) / len(input_text)`. A prompt with
no text at all, such as a lone tool message without content or content made only of non-text parts,
makes that a ZeroDivisionError inside Serve's request assignment loop. Serve logs "Unexpected error in
_fulfill_pending_requests" and the request is never assigned: the client hangs until its own timeout.
The schema fuzzing of the live router found it (`{"messages": [{"role": "tool"}]}`). Such a prompt has
no prefix to match anyway, so this router gives it the default choice (power of two) instead.

The router runs in the caller's process (our router replicas' handles), so the class must be
importable there; `engine/pool.py` names it in each engine deployment's request_router_config.
Checked against Ray 2.60.0: the overridden method is the class's own private step.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve.llm.request_router import PrefixCacheAffinityRouter

logger = logging.getLogger("llm_serve.engine")


class SafePrefixCacheAffinityRouter(PrefixCacheAffinityRouter):
    async def _prefix_match_best_replicas(self, pending_request: Any, candidate_replicas: list[Any]) -> list[Any]:
        try:
            return await super()._prefix_match_best_replicas(pending_request, candidate_replicas)
        except ZeroDivisionError:  # no text to match: `choose_replicas` falls back to its pow-2 choice
            logger.debug("prompt without text: default replica choice")
            return [[]]
