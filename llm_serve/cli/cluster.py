"""`llm-serve cluster render | validate`: the cluster files generated from a config, checked offline."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from llm_serve.cli.common import accept_config, say


def cmd_cluster_render(args: argparse.Namespace) -> int:
    from llm_serve.cluster.render import render_files, write
    from llm_serve.cluster.validate import validate_file
    from llm_serve.config import ConfigError, parse_config

    source = getattr(args, "config", None)
    if not source:
        say("error: give the config to render: llm-serve cluster render --config configs/gpu.yaml")
        return 2
    try:
        raw = yaml.safe_load(Path(source).read_text()) or {}
        config = parse_config(raw, origin=source)
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        say(f"error: {exc}")
        return 2
    paths = write(render_files(raw, config, source), Path(args.out))
    problems = [p for path in paths for p in validate_file(path)]
    for path in paths:
        say(f"wrote {path}")
    for problem in problems:
        say(f"invalid: {problem}")
    return 1 if problems else 0


def cmd_cluster_validate(args: argparse.Namespace) -> int:
    from llm_serve.cluster.validate import validate_file

    root = Path(args.dir)
    paths = sorted(p for p in [*root.glob("*.yaml"), *root.glob("kuberay/*.yaml")] if p.is_file())
    if not paths:
        say(f"error: no YAML files in {root} or {root / 'kuberay'}")
        return 2
    problems = [p for path in paths for p in validate_file(path)]
    for problem in problems:
        say(f"invalid: {problem}")
    say(f"{len(paths)} files, {len(problems)} problems")
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="KubeRay and cluster launcher files from a config").add_subparsers(
        dest="cluster_cmd", required=True
    )
    render = cluster.add_parser("render", help="write cluster/kuberay/*.yaml, ray-cluster.yaml, serve-config.yaml")
    render.add_argument("--out", default="cluster", help="directory to write into (default: cluster)")
    render.set_defaults(func=cmd_cluster_render)
    validate = cluster.add_parser("validate", help="check rendered files against their schemas, offline")
    validate.add_argument("dir", nargs="?", default="cluster", help="the directory render wrote (default: cluster)")
    validate.set_defaults(func=cmd_cluster_validate)
    accept_config(render)
