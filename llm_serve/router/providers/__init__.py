"""API providers (OpenAI, Anthropic, OpenAI-compatible) as pools beside engine pools."""
