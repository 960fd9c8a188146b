"""`llm-serve`: the command line, one module per command group.

up | down | status         the serving stack (stack.py)
models list | pull | quantize  registry models, quantized checkpoints (models.py)
ingest                     documents into a Milvus collection (ingest.py)
prompts list|show|diff|lock  the prompt registry (prompts.py)
train, adapters list       fine-tuning jobs and their adapters (train.py)
eval                       ragas evaluation of an endpoint (eval.py)
promote                    a served alias moved when its evaluation passes (promote.py)
keys create, usage         API keys and spend (keys.py)
cache calibrate            the semantic cache's verifier threshold (cache.py)
cluster render | validate  KubeRay and cluster launcher files from a config (cluster.py)
"""

from __future__ import annotations

import argparse
from typing import Any

from llm_serve.cli import cache, cluster, ingest, keys, models, promote, prompts, stack, train
from llm_serve.cli import eval as eval_cmd
from llm_serve.cli.common import say
from llm_serve.config import CONFIG_ENV, ConfigError

GROUPS = (stack, models, ingest, prompts, train, eval_cmd, promote, keys, cache, cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-serve", description="llm-serve: serve, ingest, train, evaluate.")
    parser.add_argument("--config", "-c", help=f"YAML config (default: ${CONFIG_ENV} or the embedded default)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
