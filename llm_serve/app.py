"""Build the Serve application from a config: engine pools behind the OpenAI router.

Usable three ways, all from one builder:
- `llm-serve up` (the CLI calls `build_app`);
- `serve run llm_serve.app:app_builder config=configs/local.yaml`;
- a Serve config file or KubeRay RayService with `import_path: llm_serve.app:app_builder` and
  `args: {config: /path/to.yaml}` or `args: {config_dict: {...}}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from llm_serve.config import Config, load_config, parse_config
from llm_serve.engine import build_engine_deployment
from llm_serve.engine.pool import (
    OFFLINE_ENV,
    autoscaling_options,
    deployment_safe,
    engine_deployment_name,
    phase_path,
)
from llm_serve.models import resolve_model_source
from llm_serve.prompts import PromptRegistry
from llm_serve.prompts.template import PromptTemplate
from llm_serve.rag.embedder import Embedder
from llm_serve.router.ingress import Router
from llm_serve.router.state import RouterState

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Every router replica's admissions and ledger writes queue here; they are each well under a millisecond.
STATE_MAX_ONGOING = 4096


def build_app(config: Config, *, pull_models: bool = True) -> Application:
    """The application graph: one engine deployment per model, one embedder deployment per embedding
    model, and one router in front of them all.

    Registry models are resolved (and pulled when `pull_models`) on the machine that builds the
    app; on a multi-node cluster give a hub id or a path every node can read instead.
    """
    # Engines get the tracing section only when it is on: a change of sampling or exporter must not
    # restart engine replicas of a stack that does not trace.
    tracing = config.telemetry.tracing.model_dump(mode="json") if config.telemetry.tracing.enabled else None
    engines: dict[str, Application] = {}
    sources: dict[str, str] = {}  # where the router loads each pool's tokenizer from (for reservations)
    for model in config.engine_models:  # a provider model has no engine: its router calls the API
        source = sources[model.id] = resolve_model_source(model.source, config.home_path, pull=pull_models)
        engines[model.id] = build_engine_deployment(
            model,
            source,
            config.adapter_registry(model),
            str(config.home_path / "cache" / "adapters"),
            tracing,
            str(phase_path(config.home_path, model.id)),
        )
    embedders: dict[str, Application] = {}
    for embedder in config.embedding_models:
        embedders[embedder.id] = (
            serve.deployment(Embedder, name=f"embedder-{deployment_safe(embedder.id)}")
            .options(
                autoscaling_config=autoscaling_options(embedder.autoscaling),
                max_ongoing_requests=embedder.max_ongoing_requests,
                ray_actor_options={"num_cpus": embedder.num_cpus, "runtime_env": {"env_vars": OFFLINE_ENV}},
            )
            .bind(embedder.model_dump(mode="json"), tracing)
        )
    return _router_app(config, engines, embedders, sources)


def _router_app(config: Config, engines: dict[str, Any], embedders: dict[str, Any], sources: dict[str, str]) -> Any:
    """The router and its router-state in front of the given engine and embedder deployments (or handles)."""
    # One replica on purpose: rate-limit windows, spend and the exact cache must be one truth for
    # every router replica (see router/state.py).
    state = (
        serve.deployment(RouterState, name="router-state")
        .options(
            num_replicas=1,
            max_ongoing_requests=STATE_MAX_ONGOING,
            ray_actor_options={"num_cpus": 0, "resources": dict(config.router.resources)},
        )
        .bind(config.model_dump(mode="json"))
    )
    router = serve.deployment(serve.ingress()(Router), name="router").options(
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.router.num_cpus, "resources": dict(config.router.resources)},
    )
    prompts = {"rag": load_rag_prompt(config).to_dict(), "registry": load_prompt_registry(config).to_dict()}
    return router.bind(config.model_dump(mode="json"), engines, embedders, prompts, state, sources)


def build_router_app(config: Config, engines_of: str) -> Application:
    """Another front door onto the engines and embedders of the running application `engines_of`.

    A router of its own (its keys, limits, caches, prompts and ledger, from `config`) whose pools are
    the other application's replicas: for an internal and an external endpoint over one set of
    engines, or a tenant with its own ledger. `config.models` and `config.embedding_models` name the
    deployments to reach; nothing is started for them.
    """
    engines = {
        m.id: serve.get_deployment_handle(engine_deployment_name(m.id), engines_of) for m in config.engine_models
    }
    embedders = {
        e.id: serve.get_deployment_handle(f"embedder-{deployment_safe(e.id)}", engines_of)
        for e in config.embedding_models
    }
    sources = {m.id: resolve_model_source(m.source, config.home_path, pull=False) for m in config.engine_models}
    return _router_app(config, engines, embedders, sources)


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    return path


def load_prompt_registry(config: Config) -> PromptRegistry:
    """The prompt registry, read (and checked against its lock) on the driver; replicas get plain data."""
    return PromptRegistry.load(_project_path(config.prompts.directory))


def load_rag_prompt(config: Config) -> PromptTemplate:
    """The grounded-answer prompt, read here (on the driver) so replicas need no access to the file."""
    return PromptTemplate.load(_project_path(config.rag.prompt_file))


def app_builder(args: dict[str, Any]) -> Application:
    """Entry for `serve run` / `serve deploy` / KubeRay: `config` (a YAML path) or `config_dict`."""
    if args.get("config_dict") is not None:
        config = parse_config(args["config_dict"], origin="config_dict")
    else:
        config = load_config(args.get("config"))
    return build_app(config)
