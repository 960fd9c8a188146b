"""Prompt templates: versioned files rendered in a sandboxed Jinja2."""
