"""A private local Ray for `llm-serve up`: its own ports and temp dir, stopped by its own PIDs.

Other Rays may run on the same host (a colleague's, a test's), so `ray stop` and Ray's default
ports are off limits. The head is started as `ray start --head --block` in a new session: every Ray
process it spawns (GCS, raylet, workers, vLLM engine processes) inherits that session's process
group, so stopping means signalling exactly that group and nothing else. The state file under the
llm-serve home records the PIDs and addresses, so `down` and `status` work from another shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llm_serve.config import Config

STATE_FILE = "run/up.json"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # `down` stops the whole tree itself; Ray's own drain-on-SIGTERM (for KubeRay pod deletion)
    # would only add 30 s of waiting on a single machine.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}
STOP_GRACE_S = 20.0
TOKEN_FILE = "ray-auth-token"


def auth_token_path(config: Config) -> Path:
    """The private Ray's token: made once per llm-serve home, readable by its owner only."""
    path = config.home_path / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path


def ray_env(config: Config) -> dict[str, str]:
    """The environment of the private Ray and of every client of it (the CLI, jobs, `ray job submit`).

    Ray's token auth is on: the GCS, the dashboard and job submission want the token, so another
    user (or a process without the home's token file) on the same host cannot submit jobs to it.
    """
    return {**RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(auth_token_path(config))}


class ClusterError(RuntimeError):
    """The local Ray could not be started or reached; the message says why."""


@dataclass
class RunState:
    """What `up` started, for `down` and `status`."""

    ray_pid: int
    gcs_address: str
    temp_dir: str
    url: str
    app_name: str
    config_path: str | None
    started_at: float
    up_pid: int | None = None
    milvus_pid: int | None = None


def state_path(config: Config) -> Path:
    return config.home_path / STATE_FILE


def read_state(config: Config) -> RunState | None:
    try:
        data = json.loads(state_path(config).read_text())
        known = {f.name for f in fields(RunState)}
        return RunState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def write_state(config: Config, state: RunState) -> None:
    path = state_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)


def clear_state(config: Config) -> None:
    state_path(config).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) for every live process, read from /proc (no extra dependency)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def tree_pids(root: int) -> list[int]:
    """`root`, its process group and all their descendants that are still alive.

    Ray's workers call setsid, so the process group alone misses the Serve replicas and the vLLM
    engine processes under them; they are, however, all descendants of the head we started.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seeds = [root] + [pid for pid, (_, pgid, _) in table.items() if pgid == root]
    found: set[int] = set()
    stack = [p for p in seeds if p in table]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return sorted(p for p in found if table[p][2] != "Z")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ray_temp_dir(config: Config) -> Path:
    return Path(config.ray.temp_dir).expanduser() if config.ray.temp_dir else config.home_path / "ray"


def _ray_start_command(config: Config, temp_dir: Path) -> list[str]:
    ray_bin = Path(sys.executable).with_name("ray")
    rc = config.ray
    return [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(rc.gcs_port),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(rc.dashboard_port),
        "--dashboard-agent-listen-port",
        str(rc.dashboard_agent_listen_port),
        "--metrics-export-port",
        str(rc.metrics_export_port),
        "--min-worker-port",
        str(rc.min_worker_port),
        "--max-worker-port",
        str(rc.max_worker_port),
        "--num-cpus",
        str(rc.num_cpus),
        "--object-store-memory",
        str(rc.object_store_memory_mb * 1024 * 1024),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]


def start_head(config: Config, log_file: Path) -> subprocess.Popen[bytes]:
    """Start the private head node and wait until its GCS answers."""
    rc = config.ray
    ports = (rc.gcs_port, rc.dashboard_port, rc.dashboard_agent_listen_port, rc.metrics_export_port, config.server.port)
    busy = [p for p in ports if not port_free("127.0.0.1", p)]
    if busy:
        raise ClusterError(
            f"port(s) {busy} on 127.0.0.1 are in use; is llm-serve already up (`llm-serve status`)? "
            "Otherwise choose other ports under `ray:` / `server:` in the config."
        )
    temp_dir = ray_temp_dir(config)
    temp_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    # Jobs submitted to this cluster run `llm-serve ...` and `python`: the interpreter's bin first.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **ray_env(config), "PATH": path}
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            _ray_start_command(config, temp_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"`ray start` exited with {proc.returncode}; see {log_file}")
        if not port_free("127.0.0.1", rc.gcs_port) and _gcs_ready(temp_dir):
            return proc
        time.sleep(0.5)
    stop_tree(proc.pid)
    raise ClusterError(f"the local Ray did not come up within 120 s; see {log_file}")


def replica_pids(config: Config, app_name: str, deployment: str) -> list[int]:
    """The pids of the live Serve replicas of `deployment` in `app_name` on the private Ray (for fault tests
    and benchmarks, which stop exactly these processes). Asked through `ray list actors` in a process of its
    own, so it carries the private Ray's token whatever this process already imported."""
    env = {**os.environ, **ray_env(config)}
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "list",
        "actors",
        "--format",
        "json",
        "--filter",
        f"class_name=ServeReplica:{app_name}:{deployment}",
        "--filter",
        "state=ALIVE",
        "--address",
        f"127.0.0.1:{config.ray.gcs_port}",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    return [int(actor["pid"]) for actor in json.loads(out.stdout or "[]")]


def _gcs_ready(temp_dir: Path) -> bool:
    return (temp_dir / "ray_current_cluster").exists() or any(temp_dir.glob("session_latest"))


def stop_tree(root: int, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM the head we started and everything under it, then SIGKILL what is left after `grace_s`.

    Only processes that descend from `root` (or share its process group) are touched: never by name.
    """
    if root <= 1:  # never the init process or "every process" (0, -1)
        return []
    targets = tree_pids(root)
    if not targets:
        return []
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in targets):
        time.sleep(0.25)
    # Children forked while we waited (a worker restarting) are picked up by a second snapshot.
    leftover = sorted({p for p in targets if pid_alive(p)} | set(tree_pids(root)))
    for pid in leftover:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return targets
