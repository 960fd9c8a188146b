"""The local Milvus Lite server: one process that owns the data directory, shared by all clients.

Milvus Lite opened in-process locks its data directory for that process alone, and the router
replicas, the embedder-side ingestion and the CLI are separate processes; its gRPC server lets all of
them share one store. `llm-serve up` starts it (and `down` stops it, by PID); `ingest` uses the
running one, or starts a temporary one of its own when the stack is down.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_serve.config import Config

START_TIMEOUT_S = 90.0


class MilvusUnavailable(RuntimeError):
    """Milvus could not be reached or started."""


def milvus_uri(config: Config) -> str:
    milvus = config.rag.milvus
    return milvus.uri or f"http://{milvus.lite_host}:{milvus.lite_port}"


def lite_data_dir(config: Config) -> Path:
    milvus = config.rag.milvus
    return Path(milvus.data_dir).expanduser() if milvus.data_dir else config.home_path / "milvus"


def _host_port(uri: str) -> tuple[str, int]:
    rest = uri.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    return host or "127.0.0.1", int(port or 19530)


def reachable(uri: str, timeout_s: float = 1.0) -> bool:
    host, port = _host_port(uri)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def start_lite(config: Config, log_file: Path) -> subprocess.Popen[bytes]:
    """Start the Milvus Lite server for this home and wait until it answers a client call."""
    proc = spawn_lite(config, log_file)
    wait_lite(config, proc, log_file)
    return proc


def spawn_lite(config: Config, log_file: Path) -> subprocess.Popen[bytes]:
    """Start the Milvus Lite server without waiting for it (`up` starts Ray meanwhile; `wait_lite` after)."""
    milvus = config.rag.milvus
    uri = milvus_uri(config)
    if reachable(uri):
        raise MilvusUnavailable(
            f"something already listens on {uri}; is another llm-serve up? Otherwise set rag.milvus.lite_port"
        )
    data_dir = lite_data_dir(config)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).with_name("milvus-lite")
    cmd = [
        str(binary),
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        milvus.lite_host,
        "--port",
        str(milvus.lite_port),
    ]
    with open(log_file, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_lite(config: Config, proc: subprocess.Popen[bytes], log_file: Path) -> None:
    """Until the server `spawn_lite` started answers a client call; stopped and raised if it never does."""
    milvus = config.rag.milvus
    uri = milvus_uri(config)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MilvusUnavailable(f"milvus-lite server exited with {proc.returncode}; see {log_file}")
        if reachable(uri) and _answers(uri, milvus.token):
            return
        time.sleep(0.3)
    proc.kill()
    raise MilvusUnavailable(f"milvus-lite server did not answer on {uri} within {START_TIMEOUT_S:.0f} s")


# pymilvus pings every 10 s even on an idle channel (keepalive_permit_without_calls), the Milvus Lite
# server allows one ping per 5 minutes without data, and after two strikes it sends GOAWAY
# "too_many_pings", which gRPC prints to the console of every process holding a client (reproduced: an
# idle client for 60 s). Pinging only while calls are in flight keeps the hung-call detection and ends
# the noise; an idle channel that died is found by the next call, which our callers retry.
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": 0}


def connect(uri: str, token: str | None, timeout_s: float) -> Any:
    """A MilvusClient with the keepalive the servers accept (GRPC_OPTIONS)."""
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, token=token or "", timeout=timeout_s, grpc_options=dict(GRPC_OPTIONS))


def _answers(uri: str, token: str | None) -> bool:
    try:
        client = connect(uri, token, 5)
        client.list_collections()
        client.close()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def milvus_available(config: Config) -> Iterator[str]:
    """The URI of a Milvus to use now: the configured one, the running local one, or a temporary one."""
    uri = milvus_uri(config)
    if config.rag.milvus.uri or reachable(uri):
        if not reachable(uri, timeout_s=5):
            raise MilvusUnavailable(f"Milvus at {uri} is not reachable")
        yield uri
        return
    from llm_serve.local_cluster import stop_tree

    proc = start_lite(config, config.home_path / "logs" / "milvus-lite.log")
    try:
        yield uri
    finally:
        stop_tree(proc.pid, grace_s=10)
