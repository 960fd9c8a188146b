"""Output and input safety: the toxicity score, PII redaction and the guardrail policies built on them."""
