"""The Serve config `llm-serve cluster render` generates (the RayService's serveConfigV2) deploys for real:
`serve deploy` onto a Ray of its own on 127.0.0.1 (not the suite's: a declarative deploy replaces every
application of the cluster it targets), and the application answers through its router.

The pool is an API pool in front of the scriptable upstream, so that no second engine competes for the two
cores; the application, its builder and its config are the ones a cluster runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from llm_serve import local_cluster as lc
from llm_serve.cluster.serve_config import serve_config
from llm_serve.cluster.validate import validate_serve_config
from llm_serve.config import parse_config
from tests.upstream_stub import UpstreamStub

pytestmark = pytest.mark.integration
PORTS = {"gcs_port": 6431, "dashboard_port": 8315, "dashboard_agent_listen_port": 52415, "metrics_export_port": 8398,
         "min_worker_port": 24000, "max_worker_port": 24999}  # fmt: skip
SERVER_PORT = 8041
DEPLOY_TIMEOUT_S = 300
DASHBOARD_TIMEOUT_S = 120


def test_the_rendered_serve_config_deploys_with_serve_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The head's environment is its replicas': the API pool's key and the tenant key come from it, as they
    # come from the Secret on KubeRay. A cluster listens on every interface, so keys are required.
    monkeypatch.setenv("STUB_KEY", "k")
    monkeypatch.setenv("CLUSTER_CHECK_KEY", "sk-cluster-check")
    auth = {"authorization": "Bearer sk-cluster-check"}
    short_dir = tempfile.mkdtemp(prefix="lsc-", dir="/tmp")
    with UpstreamStub() as stub:
        raw = {
            "home": str(tmp_path / "home"),
            "app_name": "cluster-check",
            "ray": {"num_cpus": 4, **PORTS, "temp_dir": short_dir},  # Ray's socket paths have a length limit
            "server": {"port": SERVER_PORT},
            "models": [
                {
                    "id": "stub-gpt",
                    "provider": {
                        "kind": "openai_compatible",
                        "base_url": f"{stub.url}/v1",
                        "model": "upstream-model",
                        "api_key_env": "STUB_KEY",
                    },
                },
            ],
            "embedding_models": [],
            "auth": {"keys": [{"name": "check", "key_env": "CLUSTER_CHECK_KEY"}]},
        }
        config = parse_config(raw)
        rendered = serve_config(raw, config, host="127.0.0.1")
        assert validate_serve_config(rendered) == []
        path = tmp_path / "serve-config.yaml"
        path.write_text(yaml.safe_dump(rendered, sort_keys=False))

        head = lc.start_head(config, tmp_path / "ray-head.log")
        try:
            env = {**os.environ, **lc.ray_env(config)}
            serve_bin = Path(sys.executable).with_name("serve")
            address = f"http://127.0.0.1:{PORTS['dashboard_port']}"
            deadline = time.monotonic() + DASHBOARD_TIMEOUT_S
            while True:  # the dashboard (the address `serve deploy` talks to) comes up after the GCS
                done = subprocess.run([str(serve_bin), "deploy", str(path), "-a", address], env=env,
                                      capture_output=True, text=True, timeout=180)  # fmt: skip
                if done.returncode == 0 or "Failed to connect" not in done.stderr + done.stdout:
                    break
                assert time.monotonic() < deadline, done.stderr[-2000:]
                time.sleep(2)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

            url = f"http://127.0.0.1:{SERVER_PORT}"
            deadline = time.monotonic() + DEPLOY_TIMEOUT_S
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the deployed application did not become ready"
                time.sleep(2)
            assert [m["id"] for m in httpx.get(f"{url}/v1/models", headers=auth, timeout=30).json()["data"]] == [
                "stub-gpt"
            ]
            answer = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "stub-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
                headers=auth,
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "stub answer"
            assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401  # and the key is enforced
            assert stub.script.calls and stub.script.calls[-1]["headers"]["authorization"] == "Bearer k"
        finally:
            lc.stop_tree(head.pid)
            shutil.rmtree(short_dir, ignore_errors=True)
