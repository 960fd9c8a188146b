"""`llm-serve prompts list | show | diff | lock`: the versioned prompt registry on disk."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llm_serve.cli.common import say


def _prompts(args: argparse.Namespace) -> Any:
    from llm_serve.prompts.registry import PromptRegistry, default_prompts_dir

    return PromptRegistry.load(args.dir or default_prompts_dir())


def _prompt_command(command: Any) -> Any:
    """Registry errors are the user's to fix (a bad ref, an edited locked version): one line, exit 1."""

    def run(args: argparse.Namespace) -> int:
        from llm_serve.prompts.version import PromptError

        try:
            return int(command(args) or 0)
        except PromptError as exc:
            say(f"error: {exc}")
            return 1

    return run


def _arms(arms: dict[str, float]) -> str:
    if len(arms) == 1:
        return next(iter(arms))
    return "{" + ", ".join(f"{v}: {share:.0%}" for v, share in arms.items()) + "}"


def cmd_prompts_list(args: argparse.Namespace) -> int:
    registry = _prompts(args)
    rows = [("name", "versions", "aliases", "description")]
    for name in registry.names():
        aliases = ", ".join(f"{a}={_arms(arms)}" for a, arms in registry.aliases(name).items()) or "-"
        described = registry.resolve(name, sticky_key="").prompt.description or "-"
        rows.append((name, ", ".join(registry.versions(name)), aliases, described))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    return 0


def _yaml(data: Any) -> str:
    """YAML with templates as literal blocks, so they read as they were written."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)


def cmd_prompts_show(args: argparse.Namespace) -> int:
    registry = _prompts(args)
    name, _, tag = args.ref.partition("@")
    resolved = registry.resolve_ref(args.ref, sticky_key="")
    arms = registry.aliases(name).get(resolved.alias or "", {})
    if tag and len(arms) > 1:  # a weighted alias: show every arm, not one random pick
        print(f"{name}@{tag} splits between {_arms(arms)}")
        prompts = [registry.get(name, v) for v in arms]
    else:
        prompts = [resolved.prompt]
    for prompt in prompts:
        data = prompt.to_dict()
        body = {"variables": prompt.variables_schema, "output_schema": prompt.output_schema}
        body |= {k: data[k] for k in ("template", "messages") if k in data}
        print(f"ref: {prompt.ref}" + (f"  (alias {resolved.alias})" if resolved.alias and len(arms) == 1 else ""))
        print(f"description: {prompt.description or '-'}")
        print(_yaml(body).rstrip())
    return 0


def cmd_prompts_diff(args: argparse.Namespace) -> int:
    import difflib

    registry = _prompts(args)
    texts, labels = [], []
    for ref in (args.a, args.b):
        name, _, tag = ref.partition("@")
        if tag and len(registry.aliases(name).get(tag, {})) > 1:
            say(f"error: {ref} is a weighted split; diff its versions instead")
            return 1
        prompt = registry.resolve_ref(ref).prompt
        path = registry.path_of(prompt.name, prompt.version)
        text = path.read_text() if path else _yaml(prompt.to_dict())
        texts.append(text.splitlines(keepends=True))
        labels.append(f"{prompt.name}@{prompt.version}")
    sys.stdout.writelines(difflib.unified_diff(texts[0], texts[1], fromfile=labels[0], tofile=labels[1]))
    return 0


def cmd_prompts_lock(args: argparse.Namespace) -> int:
    from llm_serve.prompts.registry import PromptRegistry, default_prompts_dir, write_lock

    directory = args.dir or default_prompts_dir()
    file, added = write_lock(directory)
    print(f"locked {', '.join(added)} in {file}" if added else f"{file} is up to date")
    if args.no_tracking:
        return 0
    return register_locked(PromptRegistry.load(directory), args.tracking_uri)


def register_locked(registry: Any, uri: str | None) -> int:
    """Every locked version into MLflow's prompt registry, not only the new ones: registering is idempotent
    (matched by content hash), so a store created after the lock, or a run that failed halfway, catches up."""
    from llm_serve.config import load_config
    from llm_serve.tracking import Tracker

    config = load_config()
    if not config.tracking.enabled and uri is None:
        return 0
    try:
        tracker = Tracker.from_config(config, uri)
        registered = []
        for key in registry.lock_entries():
            name, _, version = key.partition("@")
            number = tracker.register_prompt(registry.get(name, version))
            registered.append(f"{key} -> prompts:/{name}/{number}")
    except Exception as exc:  # MlflowException, sqlalchemy's, OSError: the lock itself is written already
        say(f"warning: prompts not registered in MLflow: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        return 1
    say(f"mlflow: {len(registered)} version(s) in the prompt registry at {tracker.uri}: {', '.join(registered)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    prompts = sub.add_parser("prompts", help="the versioned prompt registry").add_subparsers(
        dest="prompts_cmd", required=True
    )
    prompt_list = prompts.add_parser("list", help="prompts, their versions and aliases")
    prompt_list.set_defaults(func=_prompt_command(cmd_prompts_list))
    show = prompts.add_parser("show", help="one version: ref, schemas and template")
    show.add_argument("ref", metavar="NAME[@VERSION|@ALIAS]")
    show.set_defaults(func=_prompt_command(cmd_prompts_show))
    diff = prompts.add_parser("diff", help="unified diff of two versions' files")
    diff.add_argument("a", metavar="NAME@A")
    diff.add_argument("b", metavar="NAME@B")
    diff.set_defaults(func=_prompt_command(cmd_prompts_diff))
    lock = prompts.add_parser("lock", help="record every version's content hash in prompts.lock")
    lock.add_argument("--no-tracking", action="store_true", help="do not register the versions in MLflow")
    lock.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: the config's)")
    lock.set_defaults(func=_prompt_command(cmd_prompts_lock))
    for leaf in (prompt_list, show, diff, lock):
        leaf.add_argument("--dir", help="prompts directory (default: ./configs/prompts, else the bundled one)")
