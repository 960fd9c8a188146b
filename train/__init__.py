"""llm-serve training plane."""
