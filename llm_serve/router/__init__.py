"""The router: the one place that knows about HTTP, keys, caches and prompts; engines know none of it."""
