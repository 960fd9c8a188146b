"""`llm-serve ingest`: index documents into a Milvus collection (idempotent), or delete sources."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_serve.cli.common import accept_config, load, say


def cmd_ingest(args: argparse.Namespace) -> int:
    from llm_serve.rag.ingest import ingest
    from llm_serve.rag.milvus_server import MilvusUnavailable
    from llm_serve.rag.store import StoreError

    config = load(args)
    if not args.paths and not args.delete:
        say("nothing to do: give PATH... to ingest and/or --delete SOURCE")
        return 2
    from llm_serve.rag.loaders import source_name

    # Sources are stored relative to the working directory (or absolute): name them the same way here.
    deletions = [source_name(Path(s)) for s in args.delete or ()]
    try:
        report = ingest(args.paths, args.collection, config, delete_sources=deletions)
    except (MilvusUnavailable, StoreError, ValueError) as exc:
        say(f"error: {exc}")
        return 1
    print(report.summary())
    return 1 if report.errors else 0


def register(sub: argparse._SubParsersAction) -> None:
    ingest = sub.add_parser("ingest", help="index documents into a Milvus collection (idempotent)")
    ingest.add_argument("paths", nargs="*", metavar="PATH", help=".txt, .md, .html, .pdf files or directories")
    ingest.add_argument("--collection", required=True, help="collection name (created on first use)")
    ingest.add_argument(
        "--delete",
        action="append",
        metavar="SOURCE",
        help="remove the chunks of this source (a file, or a directory prefix); repeatable",
    )
    ingest.set_defaults(func=cmd_ingest)
    accept_config(ingest)
