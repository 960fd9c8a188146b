"""llm-serve: an LLMOps platform on Ray (serving plane)."""

__version__ = "0.1.0"
