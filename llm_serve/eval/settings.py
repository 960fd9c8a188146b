"""Everything `llm-serve eval` can be told, with its defaults in one place.

The CLI reads its defaults from these models too, so `--help`, the library entry (`run_eval`) and the
report all agree on what an unset option means.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Environment variables consulted, in order, when no API key is given: the server's own name first.
API_KEY_ENVS = ("LLM_SERVE_API_KEY", "OPENAI_API_KEY")


class JudgeOptions(BaseModel):
    """An OpenAI-compatible model that grades answers (faithfulness, answer relevancy) through ragas."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str = Field(..., description="Base URL of the judge, with or without the trailing /v1.")
    model: str = Field(..., description="Chat model id the judge endpoint serves.")
    embedding_model: str | None = Field(
        None, description="Embedding model id on the judge endpoint; answer_relevancy needs it and is skipped without."
    )
    api_key: str | None = Field(None, description="Judge API key (default: the endpoint's key).")
    # ragas' own default (1024) overruns small judges' context windows on the longer prompts.
    max_tokens: int = Field(512, ge=16, description="Token budget of one judge answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of the judge.")
    attempts: int = Field(
        2, ge=1, description="Tries per judge call (instructor re-asks with the validation error after a bad answer)."
    )
    relevancy_questions: int = Field(
        3, ge=1, description="Questions answer_relevancy generates per answer (ragas' `strictness`)."
    )
    timeout_s: float = Field(300.0, gt=0, description="Timeout of one judge request.")


class EvalOptions(BaseModel):
    """One evaluation run: the data, the endpoint, the variants, the gates and how to run it."""

    model_config = ConfigDict(extra="forbid")

    dataset: Path = Field(..., description="JSONL evaluation set (see docs/eval.md for the fields).")
    endpoint: str = Field(..., description="Base URL of the OpenAI-compatible endpoint, with or without /v1.")
    model: str = Field(..., description="Model (or adapter) id of the primary variant.")
    prompt: str | None = Field(
        None, description="Registry prompt of the primary variant: NAME, NAME@VERSION or NAME@alias:ALIAS."
    )
    rag: str | None = Field(None, description="Collection to retrieve from (llm-serve's `rag` extension).")
    compare: list[str] = Field(
        default_factory=list,
        description="Further variants: 'model=M', 'prompt=NAME@V', both comma-joined, or a bare model id.",
    )
    gates: list[str] = Field(
        default_factory=list,
        description="'METRIC=VALUE[:min|:max]' thresholds on the primary's means (no suffix: the metric's sense).",
    )
    judge: JudgeOptions | None = Field(None, description="LLM judge for faithfulness and answer_relevancy.")
    out: Path | None = Field(None, description="Output directory (default: <out_root>/<timestamp>/).")
    out_root: Path = Field(Path("eval-results"), description="Parent of the timestamped default output directory.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N rows.")
    api_key: str | None = Field(None, description=f"API key (default: ${' or $'.join(API_KEY_ENVS)}).")
    concurrency: int = Field(4, ge=1, description="Requests in flight at once (also judge rows scored at once).")
    max_tokens: int = Field(128, ge=1, description="max_tokens of each answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature: 0 so reruns are comparable.")
    max_errors: int = Field(0, ge=0, description="Failed rows a variant may have before the run exits 1.")
    no_cache: bool = Field(False, description="Send `cache: false` (llm-serve) so answers are generated afresh.")
    timeout_s: float = Field(300.0, gt=0, description="Timeout of one chat request.")
    connect_timeout_s: float = Field(5.0, gt=0, description="How long the endpoint gets to accept a connection.")
    progress: bool = Field(True, description="Show progress bars on stderr.")
    max_listed_errors: int = Field(20, ge=1, description="Dataset errors and failed rows listed before 'and N more'.")
    feedback: bool = Field(
        False, description="Add users' feedback on the traffic each variant's model/prompt served (an admin key)."
    )
    tracking: bool = Field(True, description="Log the run to MLflow (parent run, one nested run per variant).")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: config tracking.uri, $MLFLOW_TRACKING_URI, <home>/mlflow."
    )
    experiment: str | None = Field(None, description="MLflow experiment (default: config tracking.eval_experiment).")
    run_name: str | None = Field(None, description="Name of the parent MLflow run (default: eval <dataset file>).")


def option_default(name: str) -> object:
    """The default of an EvalOptions field, for the CLI's argparse defaults and help."""
    return EvalOptions.model_fields[name].default
