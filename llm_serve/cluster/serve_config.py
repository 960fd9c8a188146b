"""The Ray Serve config (what `serve deploy` and a RayService's `serveConfigV2` take), generated from an
llm-serve config, so that the config a cluster runs and the file a user edits never drift apart.

The application is built by the same builder `llm-serve up` uses (`llm_serve.app:app_builder`), with the
whole llm-serve config inline (`config_dict`): no path that every node would have to read.
"""

from __future__ import annotations

import copy
from typing import Any

from llm_serve.config import Config

IMPORT_PATH = "llm_serve.app:app_builder"
LEDGER_URL_ENV = "LLM_SERVE_LEDGER_URL"
MILVUS_PORT = 19530


def cluster_config(raw: dict[str, Any], config: Config, *, milvus_uri: str | None = None) -> dict[str, Any]:
    """The llm-serve config as it runs on a cluster: joins the cluster's Ray, listens on every interface,
    and, where the file leaves them unset, uses the cluster's Milvus and reads the ledger URL from the
    secret (LLM_SERVE_LEDGER_URL). The rendered section of the file itself (`cluster`) is dropped: the
    replicas have no use for it."""
    out = copy.deepcopy(raw)
    out.pop("cluster", None)
    out["ray"] = {**out.get("ray", {}), "address": "auto"}
    out["server"] = {**out.get("server", {}), "host": "0.0.0.0"}
    if milvus_uri is not None and config.rag.milvus.uri is None:
        rag = out.setdefault("rag", {})
        rag["milvus"] = {**rag.get("milvus", {}), "uri": milvus_uri}
    if config.ledger.url is None and config.ledger.url_env is None:
        out["ledger"] = {**out.get("ledger", {}), "url_env": LEDGER_URL_ENV}
    return out


def serve_config(
    raw: dict[str, Any],
    config: Config,
    *,
    milvus_uri: str | None = None,
    host: str = "0.0.0.0",
    proxy_location: str = "EveryNode",
) -> dict[str, Any]:
    """A Serve config file (ServeDeploySchema): one application, a proxy on every node, listening on `host`
    (every interface on a cluster). Tests that run several nodes on one machine bind 127.0.0.1 and keep one
    proxy (HeadOnly): proxies of two nodes on one host would share the port."""
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": config.server.port},
        "applications": [
            {
                "name": config.app_name,
                "import_path": IMPORT_PATH,
                "route_prefix": config.route_prefix,
                "args": {"config_dict": cluster_config(raw, config, milvus_uri=milvus_uri)},
            }
        ],
    }
