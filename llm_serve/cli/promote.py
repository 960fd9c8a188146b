"""`llm-serve promote ALIAS --to MODEL[:ADAPTER] --prompt NAME@V --gate ...`: a served alias moved by evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_serve.cli.common import positive, say


def cmd_promote(args: argparse.Namespace) -> int:
    from llm_serve.config import load_config
    from llm_serve.eval import DatasetError, EvalOptions, UsageError
    from llm_serve.eval.promote import BUNDLED_DATASET, PromoteOptions, promote
    from llm_serve.eval.report import gate_specs

    config = load_config(getattr(args, "config", None))
    endpoint = args.endpoint or f"http://{config.server.host}:{config.server.port}"
    try:
        gates = gate_specs(args.min or [], args.max or [], args.gate or [])
        options = PromoteOptions(
            alias=args.alias,
            to=args.to,
            prompt=args.prompt,
            gates=gates,
            rollback=args.rollback,
            note=args.note,
            endpoint=endpoint,
            api_key=args.api_key,
            eval=EvalOptions(
                dataset=args.dataset or BUNDLED_DATASET,
                endpoint=endpoint,
                model=args.to or "-",
                rag=args.rag,
                limit=args.limit,
                max_tokens=args.max_tokens,
                concurrency=args.concurrency,
                no_cache=True,  # the candidate must answer for itself, not from an earlier answer
                out=args.out,
                progress=not args.no_progress,
                tracking=not args.no_tracking,
                tracking_uri=args.tracking_uri,
                max_errors=args.max_errors,
            ),
        )
        outcome = promote(options)
    except (UsageError, DatasetError) as exc:
        say(f"error: {exc}")
        return 2
    if outcome.evaluation is not None:
        print(outcome.evaluation.markdown, end="", flush=True)
    for message in outcome.messages:
        say(message)
    return outcome.exit_code


def register(sub: argparse._SubParsersAction) -> None:
    from llm_serve.eval.settings import option_default

    p = sub.add_parser(
        "promote",
        help="move a served alias to a model/adapter/prompt version only if its evaluation passes the gates",
        description="Evaluate the candidate through the live endpoint (the alias as it is now beside it), move the "
        "alias when every gate passes, log the decision to MLflow. Exit 0: moved (or rolled back); 1: refused by "
        "a gate; 2: bad usage. Needs an admin key. See docs/eval.md.",
    )
    p.add_argument("alias", help="the served alias clients call, e.g. support-bot")
    p.add_argument("--to", metavar="MODEL[:ADAPTER]", help="the candidate")
    p.add_argument("--prompt", metavar="NAME@VERSION", help="the candidate's prompt version, pinned through the alias")
    p.add_argument("--gate", action="append", metavar="METRIC=VALUE[:min|:max]", help="repeatable; at least one")
    p.add_argument("--min", action="append", metavar="METRIC=VALUE", help="a minimum gate; repeatable")
    p.add_argument("--max", action="append", metavar="METRIC=VALUE", help="a maximum gate; repeatable")
    p.add_argument("--rollback", action="store_true", help="point the alias back at its previous target")
    p.add_argument("--note", help="why (kept with the move)")
    p.add_argument("--dataset", type=Path, help="evaluation set (default: the bundled data/eval/nimbus_rag.jsonl)")
    p.add_argument("--endpoint", help="base URL (default: this config's server)")
    p.add_argument("--api-key", help="an admin key (default $LLM_SERVE_API_KEY, then $OPENAI_API_KEY)")
    p.add_argument("--rag", metavar="COLLECTION", help="evaluate with retrieval from this collection")
    p.add_argument("--limit", type=positive, metavar="N", help="only the first N rows")
    p.add_argument("--max-tokens", type=positive, default=option_default("max_tokens"), metavar="N")
    p.add_argument("--concurrency", type=positive, default=option_default("concurrency"), metavar="N")
    p.add_argument("--max-errors", type=int, default=0, metavar="N", help="failed rows allowed (default 0)")
    p.add_argument("--out", type=Path, metavar="DIR", help="where the evaluation's results go")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tracking", action="store_true", help="log neither the evaluation nor the decision to MLflow")
    p.add_argument("--tracking-uri", metavar="URI")
    p.set_defaults(func=cmd_promote)
