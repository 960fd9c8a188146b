"""Observability: OpenTelemetry tracing (GenAI conventions) and Prometheus metrics through Ray."""
