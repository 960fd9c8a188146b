"""The Serve config `llm-serve cluster render` generates (the RayService's serveConfigV2) deploys for real:
`serve deploy` onto a Ray of its own on 127.0.0.1 (not the suite's: a declarative deploy replaces every
application of the cluster it targets), and the application answers through its router.

The pool is an API pool in front of the scriptable upstream, so that no second engine competes for the two
cores; the application, its builder and its config are the ones a cluster runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from llm_serve.cluster.validate import validate_serve_config
from llm_serve.config import parse_config
from tests.integration.ray_nodes import Cluster
from tests.upstream_stub import UpstreamStub

pytestmark = pytest.mark.integration
PORTS = {"gcs_port": 6431, "dashboard_port": 8315, "dashboard_agent_listen_port": 52415, "metrics_export_port": 8398,
         "min_worker_port": 24000, "max_worker_port": 24999}  # fmt: skip
SERVER_PORT = 8041
DEPLOY_TIMEOUT_S = 300


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
        cluster = Cluster(raw=raw, config=parse_config(raw), workdir=tmp_path)
        assert validate_serve_config(cluster.serve_config()) == []
        try:
            cluster.start_head()
            cluster.deploy()
            cluster.wait_ready(DEPLOY_TIMEOUT_S)
            url = cluster.url
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
            cluster.stop()
            shutil.rmtree(short_dir, ignore_errors=True)
