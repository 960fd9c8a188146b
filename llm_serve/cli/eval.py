"""`llm-serve eval`: score an endpoint on a JSONL evaluation set with ragas (docs/eval.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_serve.cli.common import non_negative, positive, say


def cmd_eval(args: argparse.Namespace) -> int:
    """Exit 0 all good, 1 a gate failed or too many rows failed, 2 the command could not run as given."""
    from llm_serve.eval import DatasetError, EvalOptions, JudgeOptions, UsageError, run_eval

    judged = (args.judge_endpoint, args.judge_model)
    if any(judged) and not all(judged):
        say("error: --judge-endpoint and --judge-model go together")
        return 2
    if (args.judge_embedding_model or args.judge_api_key) and not args.judge_endpoint:
        say("error: --judge-embedding-model and --judge-api-key need --judge-endpoint and --judge-model")
        return 2
    judge = None
    if args.judge_endpoint:
        judge = JudgeOptions(
            endpoint=args.judge_endpoint,
            model=args.judge_model,
            embedding_model=args.judge_embedding_model,
            api_key=args.judge_api_key,
        )
    from llm_serve.eval.report import gate_specs

    try:
        gates = gate_specs(args.min or [], args.max or [], args.gate or [])
    except UsageError as exc:
        say(f"error: {exc}")
        return 2
    options = EvalOptions(
        dataset=args.dataset,
        endpoint=args.endpoint,
        model=args.model,
        prompt=args.prompt,
        rag=args.rag,
        compare=args.compare or [],
        gates=gates,
        judge=judge,
        out=args.out,
        limit=args.limit,
        api_key=args.api_key,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        max_errors=args.max_errors,
        no_cache=args.no_cache,
        progress=not args.no_progress,
        feedback=args.feedback,
        tracking=not args.no_tracking,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        run_name=args.run_name,
    )
    try:
        outcome = run_eval(options)
    except (UsageError, DatasetError) as exc:
        say(f"error: {exc}")
        return 2
    print(outcome.markdown, end="", flush=True)
    for message in outcome.messages:
        say(message)
    return outcome.exit_code


def register(sub: argparse._SubParsersAction) -> None:
    from llm_serve.eval.settings import option_default

    ev = sub.add_parser(
        "eval",
        help="score an endpoint on a JSONL evaluation set with ragas (compare variants, gate CI)",
        description="Run a JSONL evaluation set through an OpenAI-compatible endpoint and score the answers "
        "with ragas. Exit 0: all gates passed; 1: a gate failed or too many rows failed; 2: bad usage, "
        "dataset or endpoint. See docs/eval.md.",
    )
    ev.add_argument("--dataset", required=True, type=Path, help="JSONL: question, reference, ... (docs/eval.md)")
    ev.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    ev.add_argument("--model", required=True, help="model or adapter id of the primary variant")
    ev.add_argument("--prompt", metavar="NAME[@VERSION|@alias:ALIAS]", help="answer through a registry prompt")
    ev.add_argument("--rag", metavar="COLLECTION", help="retrieve from this collection (enables context metrics)")
    ev.add_argument(
        "--compare",
        action="append",
        metavar="SPEC",
        help="another variant: model=M, prompt=NAME@V, model=M,prompt=NAME@V or a bare model id; repeatable",
    )
    ev.add_argument(
        "--min",
        action="append",
        metavar="METRIC=VALUE",
        help="fail (exit 1) when the primary's mean METRIC is below VALUE; repeatable",
    )
    ev.add_argument(
        "--max",
        action="append",
        metavar="METRIC=VALUE",
        help="fail (exit 1) when the primary's mean METRIC is above VALUE (toxicity, latency...); repeatable",
    )
    ev.add_argument(
        "--gate",
        action="append",
        metavar="METRIC=VALUE[:min|:max]",
        help="a gate in the metric's own sense (a maximum for toxicity, hallucination_rate, avg_response_time_s, "
        "avg_tokens_used; a minimum otherwise) unless :min or :max says; repeatable",
    )
    ev.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible judge for faithfulness/answer_relevancy")
    ev.add_argument("--judge-model", metavar="M", help="the judge's chat model id")
    ev.add_argument("--judge-embedding-model", metavar="E", help="embedding model id on the judge (answer_relevancy)")
    ev.add_argument("--judge-api-key", metavar="K", help="the judge's API key (default: the endpoint's)")
    ev.add_argument("--out", type=Path, metavar="DIR", help="output directory (default eval-results/<timestamp>/)")
    ev.add_argument("--limit", type=positive, metavar="N", help="only the first N rows")
    ev.add_argument("--api-key", help="API key (default $LLM_SERVE_API_KEY, then $OPENAI_API_KEY)")
    ev.add_argument(
        "--concurrency",
        type=positive,
        default=option_default("concurrency"),
        metavar="N",
        help="requests (and judged rows) in flight at once (default %(default)s)",
    )
    ev.add_argument(
        "--max-tokens",
        type=positive,
        default=option_default("max_tokens"),
        metavar="N",
        help="max_tokens of each answer (default %(default)s)",
    )
    ev.add_argument(
        "--max-errors",
        type=non_negative,
        default=option_default("max_errors"),
        metavar="N",
        help="failed rows a variant may have before the exit code is 1 (default %(default)s)",
    )
    ev.add_argument("--no-cache", action="store_true", help="ask llm-serve not to answer from its caches")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    ev.add_argument(
        "--feedback",
        action="store_true",
        help="add users' feedback (satisfaction, task completion, escalation) on the traffic each variant's "
        "model and prompt version served, from /admin/usage (needs an admin key)",
    )
    ev.add_argument("--no-tracking", action="store_true", help="do not log the run to MLflow")
    ev.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI (default: config, $MLFLOW_TRACKING_URI, <home>/mlflow/)",
    )
    ev.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default llm-serve-eval)")
    ev.add_argument("--run-name", metavar="NAME", help="name of the MLflow parent run (default: eval <dataset file>)")
    ev.set_defaults(func=cmd_eval)
