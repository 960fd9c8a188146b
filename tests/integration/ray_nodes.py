"""A Ray cluster of several nodes on 127.0.0.1 for the tests: a head started as `llm-serve up` starts its
own, more nodes joined with `ray start --address` and their own resources, and an application deployed
with `serve deploy` from the Serve config `llm-serve cluster render` generates. Every process is stopped by
the PID this module started, never by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from llm_serve import local_cluster as lc
from llm_serve.cluster.serve_config import serve_config
from llm_serve.config import Config, parse_config

BIN = Path(sys.executable).parent
DASHBOARD_TIMEOUT_S = 120


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    resources: dict[str, float]


@dataclass
class Cluster:
    raw: dict[str, Any]
    config: Config
    workdir: Path
    head: subprocess.Popen[bytes] | None = None
    nodes: list[Node] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **lc.ray_env(self.config)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.server.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.config.ray.dashboard_port}"

    def start_head(self) -> None:
        self.head = lc.start_head(self.config, self.workdir / "ray-head.log")

    def add_node(self, index: int, num_cpus: int, resources: dict[str, float]) -> Node:
        """Another raylet on this machine with ports of its own (index picks them) and custom resources."""
        base = 25000 + 1000 * index
        cmd = [str(BIN / "ray"), "start", "--block", "--address", f"127.0.0.1:{self.config.ray.gcs_port}",
               "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
               "--min-worker-port", str(base + 100), "--max-worker-port", str(base + 999),
               "--node-manager-port", str(base + 1), "--object-manager-port", str(base + 2),
               "--dashboard-agent-listen-port", str(base + 3), "--dashboard-agent-grpc-port", str(base + 4),
               "--runtime-env-agent-port", str(base + 5), "--metrics-export-port", str(base + 6),
               "--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats"]  # fmt: skip
        log = open(self.workdir / f"ray-node-{index}.log", "ab")  # noqa: SIM115 - lives as long as the node
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(proc, resources)
        self.nodes.append(node)
        deadline = time.monotonic() + 120
        while not any(self._has(n, resources) for n in self.ray_nodes()):
            assert proc.poll() is None, f"ray start (node {index}) exited; see {self.workdir}"
            assert time.monotonic() < deadline, "the node did not join"
            time.sleep(1)
        return node

    @staticmethod
    def _has(node: dict[str, Any], resources: dict[str, float]) -> bool:
        total = node.get("resources_total") or {}
        return node.get("state") == "ALIVE" and all(total.get(k) == v for k, v in resources.items())

    def kill(self, node: Node) -> None:
        """Node loss: SIGKILL the raylet and everything under it at once, no graceful drain."""
        lc.stop_tree(node.proc.pid, grace_s=0)
        self.nodes.remove(node)

    def ray_list(self, what: str) -> list[dict[str, Any]]:
        """`ray list` as JSON; retried while the state API (served by the dashboard) is still coming up."""
        cmd = [str(BIN / "ray"), "list", what, "--format", "json", "--limit", "1000",
               "--address", f"127.0.0.1:{self.config.ray.gcs_port}"]  # fmt: skip
        deadline = time.monotonic() + DASHBOARD_TIMEOUT_S
        while True:
            out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                try:
                    return json.loads(out.stdout)
                except ValueError:
                    pass
            assert time.monotonic() < deadline, out.stdout[-1000:] + out.stderr[-2000:]
            time.sleep(2)

    def ray_nodes(self) -> list[dict[str, Any]]:
        return self.ray_list("nodes")

    def replica_nodes(self) -> dict[str, list[str]]:
        """Serve actor (class name; replicas by their deployment) -> the custom resources of the nodes they live on."""
        nodes = {n["node_id"]: n for n in self.ray_nodes()}
        placed: dict[str, list[str]] = {}
        for actor in self.ray_list("actors"):
            if actor.get("state") != "ALIVE":
                continue
            cls = actor.get("class_name") or ""
            role = cls.rsplit(":", 1)[-1] if cls.startswith("ServeReplica:") else cls  # the deployment, for replicas
            total = (nodes.get(actor.get("node_id")) or {}).get("resources_total") or {}
            custom = sorted(k for k in total if k not in {"CPU", "GPU", "memory", "object_store_memory"}
                            and not k.startswith("node:") and not k.startswith("accelerator_type"))  # fmt: skip
            placed.setdefault(role, []).append(",".join(custom) or "head")
        return placed

    def serve_config(self) -> dict[str, Any]:
        """What `llm-serve cluster render` writes, bound to 127.0.0.1 with one proxy (the nodes share a host)."""
        return serve_config(self.raw, self.config, host="127.0.0.1", proxy_location="HeadOnly")

    def deploy(self) -> None:
        path = self.workdir / "serve-config.yaml"
        path.write_text(yaml.safe_dump(self.serve_config(), sort_keys=False))
        deadline = time.monotonic() + DASHBOARD_TIMEOUT_S
        while True:  # the dashboard (what `serve deploy` talks to) comes up after the GCS
            done = subprocess.run([str(BIN / "serve"), "deploy", str(path), "-a", self.dashboard], env=self.env,
                                  capture_output=True, text=True, timeout=180)  # fmt: skip
            if done.returncode == 0 or "Failed to connect" not in done.stderr + done.stdout:
                break
            assert time.monotonic() < deadline, done.stderr[-2000:]
            time.sleep(2)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def status(self) -> dict[str, Any]:
        out = subprocess.run([str(BIN / "serve"), "status", "-a", self.dashboard], env=self.env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return yaml.safe_load(out.stdout)["applications"].get(self.config.app_name, {})

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /readyz says every pool is ready; fails at once when the deploy failed."""
        started = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            app = self.status()
            assert app.get("status") != "DEPLOY_FAILED", app.get("message", "")[-3000:]
            assert time.monotonic() - started < timeout_s, "the application did not become ready"
            time.sleep(2)

    def replica_states(self, deployment: str) -> dict[str, int]:
        """A deployment's replicas by state (STARTING, RUNNING, STOPPING, ...), as `serve status` reports them."""
        return {k: int(v) for k, v in self.status()["deployments"][deployment]["replica_states"].items()}

    def replicas(self, deployment: str) -> int:
        """RUNNING replicas of a deployment."""
        return self.replica_states(deployment).get("RUNNING", 0)

    def stop(self) -> None:
        for node in list(self.nodes):
            lc.stop_tree(node.proc.pid)
        self.nodes.clear()
        if self.head is not None:
            lc.stop_tree(self.head.pid)
            self.head = None


def cluster_config(workdir: Path, temp_dir: str, model_dir: Path, **pool: Any) -> dict[str, Any]:
    """A config for a tiny-model pool on a Ray of the test's own (its ports do not meet the suite's stack)."""
    engine = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 256, "max_num_seqs": 8,
              "kv_cache_gib": 1, "request_router": "pow2", **pool.pop("engine", {})}  # fmt: skip
    model = {"id": "tiny", "source": str(model_dir), "engine": engine, **pool}
    return {
        "home": str(workdir / "home"),
        "app_name": "multinode",
        "ray": {
            "num_cpus": 4,
            "gcs_port": 6441,
            "dashboard_port": 8325,
            "dashboard_agent_listen_port": 52425,
            "metrics_export_port": 8399,
            "min_worker_port": 24000,
            "max_worker_port": 24999,
            "temp_dir": temp_dir,
        },
        # Serve binds 127.0.0.1 here; the cluster config says 0.0.0.0, which needs keys or this explicit opt-out.
        "server": {"port": 8051, "request_timeout_s": 60, "allow_unauthenticated": True},
        "models": [model],
        "embedding_models": [],
        "router": {"resources": {"node:__internal_head__": 0.01}},  # router and state stay on the head
    }


def make_cluster(workdir: Path, temp_dir: str, model_dir: Path, **pool: Any) -> Cluster:
    raw = cluster_config(workdir, temp_dir, model_dir, **pool)
    return Cluster(raw=raw, config=parse_config(raw), workdir=workdir)
