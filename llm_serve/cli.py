"""`llm-serve`: up | down | status | models | ingest | prompts.

`up` runs on a private local Ray (see local_cluster.py) unless the config or RAY_ADDRESS names a
cluster; `down` stops exactly what `up` started, by PID, never with `ray stop`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llm_serve.config import CONFIG_ENV, Config, ConfigError, load_config

SHUTDOWN_TIMEOUT_S = 30.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    return config


# ---- up / down / status -------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from llm_serve import local_cluster as lc
    from llm_serve.deploy import deploy
    from llm_serve.models import resolve_model_source

    config = _load(args)
    state = lc.read_state(config)
    if state is not None and any(p and lc.pid_alive(p) for p in (state.ray_pid, state.milvus_pid)):
        _say(f"llm-serve is already up at {state.url} (Ray pid {state.ray_pid}); `llm-serve down` stops it")
        return 1
    lc.clear_state(config)
    started = time.monotonic()
    for model in config.models:
        resolve_model_source(model.source, config.home_path, pull=True)

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    os.environ.update(lc.RAY_ENV)
    state = lc.RunState(
        ray_pid=0,
        gcs_address=address or "",
        temp_dir=str(lc.ray_temp_dir(config)),
        url="",
        app_name=config.app_name,
        config_path=args.config,
        started_at=time.time(),
        up_pid=None if args.detach else os.getpid(),
    )
    try:
        if config.rag.milvus.uri is None:
            from llm_serve.rag.milvus_server import milvus_uri, start_lite

            _say(f"starting Milvus Lite at {milvus_uri(config)} (data in {config.home_path / 'milvus'})")
            state.milvus_pid = start_lite(config, config.home_path / "logs" / "milvus-lite.log").pid
            lc.write_state(config, state)
        if address is None:
            _say(f"starting a private Ray (GCS 127.0.0.1:{config.ray.gcs_port}, temp dir {state.temp_dir})")
            head = lc.start_head(config, config.home_path / "logs" / "ray-head.log")
            state.ray_pid = head.pid
            state.gcs_address = address = f"127.0.0.1:{config.ray.gcs_port}"
            lc.write_state(config, state)
        state.url = deploy(config, address)
    except BaseException as exc:
        _stop_started(config, state)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        _say(f"error: {exc}")
        return 1
    if state.ray_pid or state.milvus_pid:
        lc.write_state(config, state)
    _say(f"ready in {time.monotonic() - started:.0f} s")
    print(f"OpenAI-compatible endpoint: {state.url}/v1  (models: {', '.join(m.id for m in config.models)})", flush=True)
    if args.detach:
        _disconnect()
        _say("detached; `llm-serve status` shows it, `llm-serve down` stops it")
        return 0
    _say("serving; press Ctrl-C to stop")
    _wait_for_signal()
    _say("stopping ...")
    _shutdown_serve()
    _stop_started(config, state)
    _say("stopped")
    return 0


def _stop_started(config: Config, state: Any) -> list[int]:
    """Stop what `up` started (by the PIDs it recorded) and forget it."""
    from llm_serve import local_cluster as lc

    stopped: list[int] = []
    for pid in (state.ray_pid, state.milvus_pid):
        if pid:
            stopped += lc.stop_tree(pid)
    lc.clear_state(config)
    return stopped


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _disconnect() -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()


def _shutdown_serve() -> None:
    """Give Serve a bounded chance to drain replicas before the processes are stopped."""
    from ray import serve

    def _run() -> None:
        with contextlib.suppress(Exception):
            serve.shutdown()

    worker = threading.Thread(target=_run, daemon=True)
    worker.start()
    worker.join(SHUTDOWN_TIMEOUT_S)
    _disconnect()


def cmd_down(args: argparse.Namespace) -> int:
    from llm_serve import local_cluster as lc

    config = _load(args)
    state = lc.read_state(config)
    if state is None:
        _say("nothing to stop: llm-serve is not up (no state under the llm-serve home)")
        return 0
    if state.up_pid and state.up_pid != os.getpid() and lc.pid_alive(state.up_pid):
        # A foreground `up` in another shell: let it drain Serve and stop its own Ray.
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.up_pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S + lc.STOP_GRACE_S
        while time.monotonic() < deadline and lc.pid_alive(state.up_pid):
            time.sleep(0.5)
    stopped = _stop_started(config, state)
    _say(f"stopped llm-serve ({len(stopped)} process(es) under Ray pid {state.ray_pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from llm_serve import local_cluster as lc
    from llm_serve.deploy import endpoint_url, fetch_json

    config = _load(args)
    state = lc.read_state(config)
    url = state.url if state and state.url else endpoint_url(config)
    if state is not None and state.ray_pid:
        alive = lc.pid_alive(state.ray_pid)
        print(f"private Ray: pid {state.ray_pid} ({'running' if alive else 'gone'}), GCS {state.gcs_address}")
    if state is not None and state.milvus_pid:
        alive = lc.pid_alive(state.milvus_pid)
        print(f"Milvus Lite: pid {state.milvus_pid} ({'running' if alive else 'gone'})")
    try:
        code, ready = fetch_json(f"{url}/readyz")
    except OSError as exc:
        print(f"endpoint {url}: not answering ({exc})")
        return 1
    print(f"endpoint {url}/v1: {ready.get('status')} (HTTP {code})")
    for model, model_state in (ready.get("models") or {}).items():
        print(f"  {model}: {model_state}")
    return 0 if code == 200 else 1


# ---- models -------------------------------------------------------------------------------------


def cmd_models_list(args: argparse.Namespace) -> int:
    from llm_serve.models.provision import list_models

    config = _load(args)
    configured = {m.source: m.id for m in config.models}
    print(f"{'name':28} {'state':14} {'served as':24} path")
    for row in list_models(config.home_path):
        state = "provisioned" if row["provisioned"] else "not pulled"
        print(f"{row['name']:28} {state:14} {configured.get(row['name'], '-'):24} {row['path']}")
    for model in config.models:
        if model.source not in {r["name"] for r in list_models(config.home_path)}:
            kind = "local dir" if Path(model.source).expanduser().is_dir() else "hub id"
            print(f"{model.source:28} {kind:14} {model.id:24} (handed to vLLM as is)")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from llm_serve.models.provision import ProvisionError, pull_model

    config = _load(args)
    try:
        pull_model(args.name, config.home_path, force=args.force)
    except ProvisionError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


# ---- ingest -------------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from llm_serve.rag.ingest import ingest
    from llm_serve.rag.milvus_server import MilvusUnavailable
    from llm_serve.rag.store import StoreError

    config = _load(args)
    if not args.paths and not args.delete:
        _say("nothing to do: give PATH... to ingest and/or --delete SOURCE")
        return 2
    from llm_serve.rag.loaders import source_name

    # Sources are stored relative to the working directory (or absolute): name them the same way here.
    deletions = [source_name(Path(s)) for s in args.delete or ()]
    try:
        report = ingest(args.paths, args.collection, config, delete_sources=deletions)
    except (MilvusUnavailable, StoreError, ValueError) as exc:
        _say(f"error: {exc}")
        return 1
    print(report.summary())
    return 1 if report.errors else 0


# ---- prompts ------------------------------------------------------------------------------------


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
            _say(f"error: {exc}")
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
            _say(f"error: {ref} is a weighted split; diff its versions instead")
            return 1
        prompt = registry.resolve_ref(ref).prompt
        path = registry.path_of(prompt.name, prompt.version)
        text = path.read_text() if path else _yaml(prompt.to_dict())
        texts.append(text.splitlines(keepends=True))
        labels.append(f"{prompt.name}@{prompt.version}")
    sys.stdout.writelines(difflib.unified_diff(texts[0], texts[1], fromfile=labels[0], tofile=labels[1]))
    return 0


def cmd_prompts_lock(args: argparse.Namespace) -> int:
    from llm_serve.prompts.registry import default_prompts_dir, write_lock

    file, added = write_lock(args.dir or default_prompts_dir())
    print(f"locked {', '.join(added)} in {file}" if added else f"{file} is up to date")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from llm_serve.router.auth import new_key

    key, digest = new_key()
    print(f"key (shown once; give it to the caller): {key}")
    print("config entry (auth.keys):")
    print(f"  - name: {args.name}\n    key_sha256: {digest}")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from llm_serve.router.ledger import Ledger, default_url, period_start

    config = load_config(args.config)
    ledger = Ledger(config.ledger.url or default_url(config.home_path))
    rows = ledger.usage(period_start(args.period), key_name=args.key)
    print(f"{'key':<20} {'model':<32} {'requests':>8} {'errors':>6} {'hits':>6} {'in':>9} {'out':>9} {'cost_usd':>12}")
    for r in rows:
        print(
            f"{r['key_name']:<20} {r['model']:<32} {r['requests']:>8} {r['errors']:>6} {r['cache_hits']:>6} "
            f"{r['prompt_tokens']:>9} {r['completion_tokens']:>9} {r['cost_usd']:>12.6f}"
        )
    if not rows:
        print(f"(no requests this {args.period})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.config import load_train_config
    from train.job import run

    config = load_config(args.config)
    recipe = load_train_config(args.recipe)
    if args.run_name:
        recipe = recipe.model_copy(update={"name": args.run_name})
    try:
        result = run(recipe, config, address=args.address, say=_say)
    except ValueError as exc:  # bad data (DataError names each line) or an impossible combination
        _say(f"error: {exc}")
        return 1
    m = result.metrics
    _say(
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


# ---- eval ---------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    """Exit 0 all good, 1 a gate failed or too many rows failed, 2 the command could not run as given."""
    from llm_serve.eval import DatasetError, EvalOptions, JudgeOptions, UsageError, run_eval

    judged = (args.judge_endpoint, args.judge_model)
    if any(judged) and not all(judged):
        _say("error: --judge-endpoint and --judge-model go together")
        return 2
    if (args.judge_embedding_model or args.judge_api_key) and not args.judge_endpoint:
        _say("error: --judge-embedding-model and --judge-api-key need --judge-endpoint and --judge-model")
        return 2
    judge = None
    if args.judge_endpoint:
        judge = JudgeOptions(
            endpoint=args.judge_endpoint,
            model=args.judge_model,
            embedding_model=args.judge_embedding_model,
            api_key=args.judge_api_key,
        )
    options = EvalOptions(
        dataset=args.dataset,
        endpoint=args.endpoint,
        model=args.model,
        prompt=args.prompt,
        rag=args.rag,
        compare=args.compare or [],
        gates=args.min or [],
        judge=judge,
        out=args.out,
        limit=args.limit,
        api_key=args.api_key,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        max_errors=args.max_errors,
        no_cache=args.no_cache,
        progress=not args.no_progress,
    )
    try:
        outcome = run_eval(options)
    except (UsageError, DatasetError) as exc:
        _say(f"error: {exc}")
        return 2
    print(outcome.markdown, end="", flush=True)
    for message in outcome.messages:
        _say(message)
    return outcome.exit_code


# ---- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", help=f"YAML config (default: ${CONFIG_ENV} or the embedded default)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="serve the OpenAI-compatible endpoint")
    up.add_argument("--detach", "-d", action="store_true", help="return once ready; stop later with `down`")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show whether the endpoint is up and ready")
    status.set_defaults(func=cmd_status)

    models = sub.add_parser("models", help="list or provision models").add_subparsers(dest="models_cmd", required=True)
    listing = models.add_parser("list", help="registry models and configured sources")
    listing.set_defaults(func=cmd_models_list)
    pull = models.add_parser("pull", help="provision a registry model into the llm-serve home")
    pull.add_argument("name")
    pull.add_argument("--force", action="store_true", help="convert again even if present")
    pull.set_defaults(func=cmd_models_pull)

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
    lock.set_defaults(func=_prompt_command(cmd_prompts_lock))
    for leaf in (prompt_list, show, diff, lock):
        leaf.add_argument("--dir", help="prompts directory (default: ./configs/prompts, else the bundled one)")

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

    _add_eval_parser(sub)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_cmd", required=True)
    create = keys.add_parser("create", help="a new random key and the hashed config entry for it")
    create.add_argument("name", help="the key's tenant name")
    create.set_defaults(func=cmd_keys_create)
    usage = sub.add_parser("usage", help="requests, tokens and spend per key and model, from the ledger")
    usage.add_argument("--period", choices=["day", "month", "total"], default="month")
    usage.add_argument("--key", help="one key name only")
    usage.set_defaults(func=cmd_usage)

    for leaf in (up, down, status, listing, pull, ingest, usage, adapters_list):
        # `llm-serve up --config X` as well as `llm-serve --config X up`.
        leaf.add_argument("--config", "-c", default=argparse.SUPPRESS, help="YAML config file")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_eval_parser(sub: Any) -> None:
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
    ev.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible judge for faithfulness/answer_relevancy")
    ev.add_argument("--judge-model", metavar="M", help="the judge's chat model id")
    ev.add_argument("--judge-embedding-model", metavar="E", help="embedding model id on the judge (answer_relevancy)")
    ev.add_argument("--judge-api-key", metavar="K", help="the judge's API key (default: the endpoint's)")
    ev.add_argument("--out", type=Path, metavar="DIR", help="output directory (default eval-results/<timestamp>/)")
    ev.add_argument("--limit", type=_positive, metavar="N", help="only the first N rows")
    ev.add_argument("--api-key", help="API key (default $LLM_SERVE_API_KEY, then $OPENAI_API_KEY)")
    ev.add_argument(
        "--concurrency",
        type=_positive,
        default=option_default("concurrency"),
        metavar="N",
        help="requests (and judged rows) in flight at once (default %(default)s)",
    )
    ev.add_argument(
        "--max-tokens",
        type=_positive,
        default=option_default("max_tokens"),
        metavar="N",
        help="max_tokens of each answer (default %(default)s)",
    )
    ev.add_argument(
        "--max-errors",
        type=_non_negative,
        default=option_default("max_errors"),
        metavar="N",
        help="failed rows a variant may have before the exit code is 1 (default %(default)s)",
    )
    ev.add_argument("--no-cache", action="store_true", help="ask llm-serve not to answer from its caches")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    ev.set_defaults(func=cmd_eval)


def main(argv: list[str] | None = None) -> int:
    args: Any = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        _say(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
