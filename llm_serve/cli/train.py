"""`llm-serve train` and `llm-serve adapters list`: fine-tuning jobs and the adapters they publish."""

from __future__ import annotations

import argparse
import os

from llm_serve.cli.common import accept_config, say
from llm_serve.config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not args.address and not os.environ.get("RAY_ADDRESS"):
        # The Ray this runs on is llm-serve's own (the running `up`'s, or a private one): its token must be
        # in the environment before Ray is imported, which reads the auth mode once.
        from llm_serve import local_cluster as lc

        os.environ.update(lc.ray_env(config))
    from train.config import load_train_config
    from train.job import run

    recipe = load_train_config(args.recipe)
    if args.run_name:
        recipe = recipe.model_copy(update={"name": args.run_name})
    try:
        result = run(recipe, config, address=args.address, say=say)
    except ValueError as exc:  # bad data (DataError names each line) or an impossible combination
        say(f"error: {exc}")
        return 1
    m = result.metrics
    say(
        f"done in {result.elapsed_s:.0f} s: {m.get('steps')} steps, loss {m.get('first_loss', 0):.3f} -> "
        f"{m.get('final_loss', 0):.3f}, eval loss {m.get('eval_loss')}, {m.get('tokens_per_s', 0):.0f} tokens/s"
    )
    print(result.adapter.model_id if result.adapter else result.model_path, flush=True)
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    from llm_serve.adapters import AdapterRegistry
    from train.job import default_registry

    config = load_config(args.config)
    registry = AdapterRegistry(args.registry or default_registry(config))
    adapters = registry.list()
    print(f"{'model id':<44} {'method':<6} {'steps':>5} {'eval_loss':>9} {'dataset':<18} {'created':<20} job")
    for a in adapters:
        m = a.metadata.get("metrics") or {}
        eval_loss = "-" if m.get("eval_loss") is None else f"{m['eval_loss']:.4f}"
        print(
            f"{a.model_id:<44} {a.metadata.get('method', '?'):<6} {m.get('steps', '-'):>5} {eval_loss:>9} "
            f"{a.metadata.get('dataset_hash', '-')!s:<18} {a.metadata.get('created_at', '-'):<20} "
            f"{a.metadata.get('job_id', '-')}"
        )
    if not adapters:
        print(f"(no adapters in {registry.root})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run a fine-tuning job (Ray Train + DeepSpeed + PEFT)")
    train.add_argument(
        "--config", dest="recipe", required=True, help="a training recipe, e.g. configs/train/faq-lora.yaml"
    )
    train.add_argument(
        "--serve-config",
        dest="config",
        default=argparse.SUPPRESS,
        help="the llm-serve config (home, registry); also `llm-serve --config FILE train ...`",
    )
    train.add_argument("--address", help="Ray to run on (default: $RAY_ADDRESS, the running `up`, or a local one)")
    train.add_argument(
        "--run-name", help="override the recipe's run name (a new name starts fresh, an old one resumes)"
    )
    train.set_defaults(func=cmd_train)
    adapters = sub.add_parser("adapters", help="the adapter registry").add_subparsers(
        dest="adapters_cmd", required=True
    )
    adapters_list = adapters.add_parser("list", help="published adapters with their metadata")
    adapters_list.add_argument("--registry", help="registry directory or URI (default <home>/adapters)")
    adapters_list.set_defaults(func=cmd_adapters_list)
    accept_config(adapters_list)
