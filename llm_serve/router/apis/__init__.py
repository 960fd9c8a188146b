"""API shapes other than OpenAI chat and completions, as adapters at the edge of the router.

Each translates its request into an OpenAI chat request, runs it through the same generation
pipeline (keys, limits, budget, prompts, RAG, caches, ledger apply unchanged), and translates the
answer, JSON or streamed, back into its own shape. The engine never sees any of them.
"""
