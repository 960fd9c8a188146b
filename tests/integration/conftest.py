"""One real stack for the whole integration session: `llm-serve up --detach`, then `llm-serve down`.

This goes through the same CLI a user runs, so the model pull (GGUF conversion), the private Ray,
the deployment and the stop-by-PID are exercised too. The llm-serve home for tests is kept between
runs (`.llm-serve-test/` in the checkout, or $LLM_SERVE_TEST_HOME) so the model converts once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fuzz import FUZZ_LIMITS
from llm_serve.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("config.yaml")
UP_TIMEOUT_S = 1500
CLI = [sys.executable, "-m", "llm_serve.cli", "--config", str(CONFIG)]


@dataclass(frozen=True)
class Stack:
    url: str
    model: str
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    @property
    def config(self) -> Config:
        """The stack's config as its processes see it: with the test home (the pytest process has no
        $LLM_SERVE_HOME of its own, and the home holds the run state and the private Ray's token)."""
        return load_config(CONFIG).model_copy(update={"home": self.env["LLM_SERVE_HOME"]})

    def ray_env(self) -> dict[str, str]:
        from llm_serve import local_cluster as lc

        return {**self.env, **lc.ray_env(self.config)}


# The upstream API of the provider tests: vLLM's own OpenAI server, behind a key that the stack's processes
# (so its router replicas) read from their environment, as a deployment's secrets are.
UPSTREAM_PORT = 8061  # clear of every other port the suite uses (test_training_jobs takes 8041)
UPSTREAM_KEY = "sk-itest-upstream-7f3a9c2e5b1d"
UPSTREAM_KEY_ENV = "LLM_SERVE_TEST_UPSTREAM_KEY"
UPSTREAM_MODEL = "smollm2-upstream"


def _test_env() -> dict[str, str]:
    home = os.environ.get("LLM_SERVE_TEST_HOME") or str(ROOT / ".llm-serve-test")
    return {**os.environ, "LLM_SERVE_HOME": home, "HF_HUB_OFFLINE": "1", UPSTREAM_KEY_ENV: UPSTREAM_KEY}


def _empty_semantic_cache(config: Config) -> None:
    """Every run starts with an empty semantic cache: the verifier reads both questions, so the per-run
    nonce in a question does not keep it from matching the same question of an earlier run (the home, and
    Milvus' data in it, outlive runs)."""
    from llm_serve.rag.milvus_server import connect, milvus_uri

    client = connect(milvus_uri(config), config.rag.milvus.token, 30)
    if client.has_collection(config.cache.semantic.collection):
        client.drop_collection(config.cache.semantic.collection)
    client.close()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    env = _test_env()
    config = load_config(CONFIG)
    stack = Stack(url=f"http://127.0.0.1:{config.server.port}", model=config.models[0].id, env=env)
    stack.cli("down")  # leftovers of an interrupted earlier run
    up = subprocess.run(
        [*CLI, "up", "--detach"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=UP_TIMEOUT_S,
    )
    sys.stderr.write(up.stdout[-4000:])
    if up.returncode != 0:
        stack.cli("down")
        pytest.fail(f"`llm-serve up` failed ({up.returncode}):\n{up.stdout[-6000:]}")
    _empty_semantic_cache(stack.config)
    try:
        yield stack
    finally:
        down = stack.cli("down", timeout=180)
        sys.stderr.write(down.stdout + down.stderr)


@pytest.fixture(scope="session")
def client(stack: Stack):
    import openai

    return openai.OpenAI(base_url=stack.base_url, api_key="not-needed", timeout=300, max_retries=0)


@pytest.fixture(scope="session")
def aclient(stack: Stack):
    import openai

    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="not-needed", timeout=300, max_retries=0)


# ---- a second router, with API keys, in front of the same engines ---------------------------------

TENANT_PREFIX = "/tenants"
TENANT_KEYS = {
    "acme": "sk-itest-acme",
    "globex": "sk-itest-globex",
    "burst": "sk-itest-burst",
    "fuzz": "sk-itest-fuzz",
    "admin": "sk-itest-admin",
}


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def tenant_config(stack: Stack, ledger: Path) -> dict:
    """The suite's stack config with keys: two tenants with their own collections and RAG alias, a key with a
    small budget, a tightly capped key for fuzzing, an admin. Its own application name and ledger."""
    import yaml

    base = yaml.safe_load(CONFIG.read_text())
    price = {"input_per_1m": 100.0, "output_per_1m": 200.0}  # dear, so that a small budget binds quickly
    base["models"][0]["price"] = price
    keys = [
        {"name": "acme", "collections": ["acme_docs"], "models": [stack.model, "acme-support"]},
        {"name": "globex", "collections": ["globex_docs"]},
        {"name": "burst", "budget_usd": 0.03, "budget_period": "total"},
        {"name": "fuzz", "limits": FUZZ_LIMITS, "collections": ["*"]},
        {"name": "admin", "admin": True},
    ]
    base["auth"] = {"keys": [{**k, "key_sha256": _sha(TENANT_KEYS[k["name"]])} for k in keys]}
    base["app_name"] = "tenants"
    base["ledger"] = {"url": f"sqlite:///{ledger}"}  # fresh each session: budgets start unspent
    base["rag"]["aliases"] = [
        {"id": "acme-support", "model": stack.model, "collection": "acme_docs", "filter": 'source like "%warranty%"'}
    ]
    base["cache"]["semantic"]["enabled"] = False
    return base


@dataclass(frozen=True)
class Tenants:
    url: str
    model: str
    ledger: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {TENANT_KEYS[name]}"}


def deploy_router(stack: Stack, config: dict, name: str, prefix: str, workdir: Path) -> str:
    """A router as a Serve application of its own on the suite's Ray (llm_serve.app.build_router_app), in
    front of the suite's engine and embedder replicas; its URL once it answers /healthz."""
    import time
    import urllib.request

    import yaml

    config_file = workdir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    stack_config = stack.config
    code = (
        "import ray; from ray import serve; from llm_serve.config import load_config; "
        "from llm_serve.app import build_router_app; "
        f"ray.init(address='127.0.0.1:{stack_config.ray.gcs_port}', namespace='llm-serve', log_to_driver=False); "
        f"serve._run(build_router_app(load_config({str(config_file)!r}), {stack_config.app_name!r}), "
        f"_blocking=False, name={name!r}, route_prefix={prefix!r})"
    )
    out = subprocess.run([sys.executable, "-c", code], env=stack.ray_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    url = stack.url + prefix
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the router {name!r} did not come up"
        time.sleep(1)
    return url


@pytest.fixture(scope="session")
def tenants(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Tenants:
    """The tenant router, with its collections ingested."""
    workdir = tmp_path_factory.mktemp("tenants")
    ledger = workdir / "tenants-ledger.sqlite"
    url = deploy_router(stack, tenant_config(stack, ledger), "tenants", TENANT_PREFIX, workdir)
    for collection, source in (("acme_docs", "warranty-and-billing.md"), ("globex_docs", "troubleshooting.md")):
        out = stack.cli("ingest", str(ROOT / "data" / "manual" / source), "--collection", collection, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
    return Tenants(url=url, model=stack.model, ledger=ledger)


@pytest.fixture(scope="session")
def second_router(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Another router process with the suite's own config (so the same ledger database and keys) at
    /replica2: what a second router replica is, but addressable, so a test can choose which one answers."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    config["home"] = stack.env["LLM_SERVE_HOME"]  # the ledger (and the response store) under the same home
    config["app_name"] = "replica2"
    return deploy_router(stack, config, "replica2", "/replica2", tmp_path_factory.mktemp("replica2"))


GUARDED_PREFIX = "/guarded"
GUARDED_KEYS = {name: f"sk-itest-{name}" for name in ("screened", "redacted", "blocked", "flagged", "admin")}


@dataclass(frozen=True)
class Guarded:
    url: str
    model: str

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {GUARDED_KEYS[name]}"}


@pytest.fixture(scope="session")
def guarded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Guarded:
    """A router with guardrail policies per key, in front of the suite's engine: `screened` has its input
    checked (toxicity blocked, PII redacted), `redacted` its output's PII redacted, `blocked` and `flagged`
    an output toxicity check whose threshold every answer crosses (so a real answer is blocked, or flagged)."""
    import yaml

    workdir = tmp_path_factory.mktemp("guarded")
    config = yaml.safe_load(CONFIG.read_text())
    config["app_name"] = "guarded"
    config["ledger"] = {"url": f"sqlite:///{workdir / 'ledger.sqlite'}"}
    config["cache"]["semantic"]["enabled"] = False
    config["guardrails"] = {
        "policies": {
            "screen-input": {"input": {"toxicity": {"action": "block"}, "pii": {"action": "redact"}}},
            "redact-output": {"output": {"pii": {"action": "redact"}}},
            "block-output": {
                "output": {"toxicity": {"action": "block", "threshold": 0.000001}},
                "refusal": "Sorry, I cannot answer that.",
            },
            "flag-output": {"output": {"toxicity": {"action": "flag", "threshold": 0.000001}}},
        }
    }
    policy = {
        "screened": "screen-input",
        "redacted": "redact-output",
        "blocked": "block-output",
        "flagged": "flag-output",
    }
    keys = [
        {"name": name, "guardrails": [policy[name]] if name in policy else [], "admin": name == "admin"}
        for name in GUARDED_KEYS
    ]
    config["auth"] = {"keys": [{**k, "key_sha256": _sha(GUARDED_KEYS[k["name"]])} for k in keys]}
    url = deploy_router(stack, config, "guarded", GUARDED_PREFIX, workdir)
    return Guarded(url=url, model=stack.model)


BATCH_PREFIX = "/batch-router"


@pytest.fixture(scope="session")
def batch_router(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A router process whose batches nobody else runs (a store of its own), with a short lease, so a test
    can kill it mid-batch and see its restarted replica take the batch up again."""
    import yaml

    workdir = tmp_path_factory.mktemp("batch-router")
    config = yaml.safe_load(CONFIG.read_text())
    config["home"] = stack.env["LLM_SERVE_HOME"]  # the suite's ledger: batch rows land where /admin reads
    config["app_name"] = "batch"
    config["batch"] = {"store_url": f"sqlite:///{workdir / 'batches.sqlite'}", "lease_s": 5.0, "poll_s": 0.5}
    return deploy_router(stack, config, "batch", BATCH_PREFIX, workdir)


# ---- API pools: vLLM's own server as the upstream, and a scriptable one in front of it ----------------

PROVIDERS_PREFIX = "/providers"


@dataclass(frozen=True)
class Providers:
    url: str
    model: str  # the stack's engine pool, which falls back to the API pool `upstream-gpt`
    stub: Any  # tests/upstream_stub.UpstreamStub, proxying to vLLM's server

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture(scope="session")
def upstream(stack: Stack) -> Iterator[str]:
    """vLLM's own OpenAI server (its Anthropic Messages endpoint included) on 127.0.0.1, with the suite's model,
    a key, and the same tool-call format as the stack's pool; the base URL, without /v1."""
    from llm_serve.config import BUNDLED_CHAT_TEMPLATES
    from llm_serve.deploy import wait_http_ready
    from llm_serve.engine.machine import choose_dtype
    from llm_serve.local_cluster import stop_tree
    from llm_serve.models import resolve_model_source

    config = stack.config
    model_dir = resolve_model_source(config.models[0].source, config.home_path, pull=False)
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", UPSTREAM_MODEL, "--host", "127.0.0.1", "--port", str(UPSTREAM_PORT),
        "--api-key", UPSTREAM_KEY, "--dtype", choose_dtype("auto", "cpu")[0], "--max-model-len", "1024",
        "--max-num-seqs", "8", "--enforce-eager", "--seed", "0", "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes", "--tool-strict-level", "parameter",
        "--chat-template", str(BUNDLED_CHAT_TEMPLATES / "chatml_tools.jinja"),
    ]  # fmt: skip
    log = open(Path(config.home_path) / "upstream-vllm.log", "wb")  # noqa: SIM115 - lives as long as the server
    env = {**stack.env, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto"}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{UPSTREAM_PORT}"
    try:
        wait_http_ready(url, 600, path="/health")
        yield url
    finally:
        stop_tree(proc.pid)
        log.close()


@pytest.fixture(scope="session")
def providers(stack: Stack, upstream: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Providers]:
    """A router whose models are the stack's engine pool (falling back to an API pool) and three API pools:
    vLLM's server as an OpenAI-compatible upstream and as an Anthropic one, and the scriptable stub."""
    import yaml

    from tests.upstream_stub import UpstreamStub

    base = yaml.safe_load(CONFIG.read_text())
    local = base["models"][0]
    up = {"base_url": f"{upstream}/v1", "model": UPSTREAM_MODEL, "api_key_env": UPSTREAM_KEY_ENV}
    price = {"input_per_1m": 2.0, "output_per_1m": 8.0}
    with UpstreamStub() as stub:
        stub.set(proxy=upstream)
        base["models"] = [
            local,
            {"id": "upstream-gpt", "provider": {"kind": "openai_compatible", "continuous_usage": True, **up},
             "price": price},
            {"id": "upstream-claude", "provider": {"kind": "anthropic", "auth_header": "authorization", **up},
             "price": price},
            {"id": "flaky-gpt", "provider": {"kind": "openai_compatible", **up, "base_url": f"{stub.url}/v1",
                                             "max_retries": 0}, "price": price},
        ]  # fmt: skip
        base["home"] = stack.env["LLM_SERVE_HOME"]
        base["app_name"] = "providers"
        base["cache"]["semantic"]["enabled"] = False
        base["rag"]["aliases"] = []
        base["routing"] = {
            "fallbacks": {local["id"]: ["upstream-gpt"]},
            "breaker_failures": 2,
            "breaker_probe_interval_s": 1.0,
        }
        url = deploy_router(stack, base, "providers", PROVIDERS_PREFIX, tmp_path_factory.mktemp("providers"))
        yield Providers(url=url, model=local["id"], stub=stub)
