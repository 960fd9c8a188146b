"""The HTTP response headers llm-serve adds: part of its API, read by its own clients (llm-serve eval).

Neutral ground so the router (which sets them) and the eval client (which reads them) share one
spelling without importing each other.
"""

REQUEST_ID = "x-request-id"  # the client's own id when it sent one, else a fresh one
CACHE = "x-llm-serve-cache"  # hit | semantic_hit | miss | bypass | coalesced | none
SIMILARITY = "x-llm-serve-cache-similarity"  # a semantic hit's cosine similarity
COST = "x-llm-serve-cost-usd"
MODEL = "x-llm-serve-model"  # the pool that answered (after aliases, auto and fallbacks), `pool:adapter`
PROMPT = "x-llm-serve-prompt"  # name@version+hash of a registry prompt
GUARDRAIL = "x-llm-serve-guardrail"  # what guardrails found: direction:check=action, comma-separated
