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


def cmd_models_quantize(args: argparse.Namespace) -> int:
    """Quantize any local Hugging Face checkpoint the way registry variants are (a model of one's own)."""
    from llm_serve.models.provision import ProvisionError, verify_quantized
    from llm_serve.models.quantize import quantize_checkpoint

    src, out = Path(args.source).expanduser(), Path(args.out).expanduser()
    if not (src / "config.json").is_file():
        say(f"error: {src} is not a Hugging Face model directory (no config.json)")
        return 2
    if out.exists():
        say(f"error: {out} exists; give a new directory")
        return 2
    say(f"quantizing {src} ({args.scheme}) into {out}")
    try:
        facts = quantize_checkpoint(src, out, args.scheme)
        verify_quantized(out, args.scheme)
    except (ProvisionError, ValueError, OSError) as exc:
        say(f"error: {exc}")
        return 1
    say(
        f"done: {facts['quantized_layers']} layers, relative weight error mean {facts['weight_rel_error_mean']:.4f}, "
        f"max {facts['weight_rel_error_max']:.4f}; serve it with `source: {out}`"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list or provision models").add_subparsers(dest="models_cmd", required=True)
    listing = models.add_parser("list", help="registry models and configured sources")
    listing.set_defaults(func=cmd_models_list)
    pull = models.add_parser("pull", help="provision a registry model into the llm-serve home")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="convert again even if present")
    pull.set_defaults(func=cmd_models_pull)
    from llm_serve.models.quantize import SCHEMES

    quantize = models.add_parser(
        "quantize", help="write a compressed-tensors W8A8 or W4A16 copy of a local checkpoint (docs/quantization.md)"
    )
    quantize.add_argument("source", help="a Hugging Face model directory")
    quantize.add_argument("--scheme", choices=sorted(SCHEMES), required=True)
    quantize.add_argument("--out", required=True, help="new directory for the quantized checkpoint")
    quantize.set_defaults(func=cmd_models_quantize)
    accept_config(listing, pull)
