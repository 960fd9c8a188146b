"""`llm-serve models list | pull`: registry models and where they are provisioned."""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_serve.cli.common import accept_config, load, say


def cmd_models_list(args: argparse.Namespace) -> int:
    from llm_serve.models.provision import list_models

    config = load(args)
    configured = {m.source: m.id for m in config.engine_models}
    print(f"{'name':28} {'state':14} {'served as':24} path")
    for row in list_models(config.home_path):
        state = "provisioned" if row["provisioned"] else "not pulled"
        print(f"{row['name']:28} {state:14} {configured.get(row['name'], '-'):24} {row['path']}")
    for model in config.engine_models:
        if model.source not in {r["name"] for r in list_models(config.home_path)}:
            kind = "local dir" if Path(model.source).expanduser().is_dir() else "hub id"
            print(f"{model.source:28} {kind:14} {model.id:24} (handed to vLLM as is)")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from llm_serve.models.provision import ProvisionError, pull_model

    config = load(args)
    try:
        pull_model(args.name, config.home_path, force=args.force)
    except ProvisionError as exc:
        say(f"error: {exc}")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list or provision models").add_subparsers(dest="models_cmd", required=True)
    listing = models.add_parser("list", help="registry models and configured sources")
    listing.set_defaults(func=cmd_models_list)
    pull = models.add_parser("pull", help="provision a registry model into the llm-serve home")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="convert again even if present")
    pull.set_defaults(func=cmd_models_pull)
    accept_config(listing, pull)
