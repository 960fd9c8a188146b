"""`llm-serve up | down | status`: the serving stack on this machine.

`up` runs on a private local Ray (see local_cluster.py) unless the config or RAY_ADDRESS names a
cluster; `down` stops exactly what `up` started, by PID, never with `ray stop`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from typing import Any

from llm_serve.cli.common import accept_config, load, say
from llm_serve.config import Config

SHUTDOWN_TIMEOUT_S = 30.0


def cmd_up(args: argparse.Namespace) -> int:
    from llm_serve import local_cluster as lc
    from llm_serve.deploy import deploy
    from llm_serve.models import resolve_model_source

    config = load(args)
    state = lc.read_state(config)
    if state is not None and any(p and lc.pid_alive(p) for p in (state.ray_pid, state.milvus_pid)):
        say(f"llm-serve is already up at {state.url} (Ray pid {state.ray_pid}); `llm-serve down` stops it")
        return 1
    lc.clear_state(config)
    started = time.monotonic()
    from llm_serve.engine.machine import choose_dtype, cpu_info
    from llm_serve.models.quantize import needs_half_activations

    cpu = cpu_info()
    for model in config.provider_models:
        say(f"model {model.id}: served by the {model.provider.kind} API at {model.provider.url()}")
    for model in config.engine_models:
        source = resolve_model_source(model.source, config.home_path, pull=True)
        try:
            dtype, why = choose_dtype(
                model.engine.dtype, model.engine.accelerator, cpu, half_activations=needs_half_activations(source)
            )
        except ValueError as exc:
            say(f"error: engine {model.id}: {exc}")
            return 1
        say(f"engine {model.id}: dtype {dtype} ({why}; {cpu.model}, {cpu.cores} cores)")

    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    split = _split_cpus(config, address)
    os.environ.update(lc.ray_env(config))
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
        milvus = None
        # Milvus and Ray inherit the serving CPUs from this process; engines bind their own (split.engine).
        with _on_cpus(split.serving if split else None):
            if config.rag.milvus.uri is None:  # started first, waited for after Ray: they start side by side
                from llm_serve.rag.milvus_server import milvus_uri, spawn_lite, wait_lite

                milvus_log = config.home_path / "logs" / "milvus-lite.log"
                say(f"starting Milvus Lite at {milvus_uri(config)} (data in {config.home_path / 'milvus'})")
                milvus = spawn_lite(config, milvus_log)
                state.milvus_pid = milvus.pid
                lc.write_state(config, state)
            if address is None:
                say(f"starting a private Ray (GCS 127.0.0.1:{config.ray.gcs_port}, temp dir {state.temp_dir})")
                head = lc.start_head(config, config.home_path / "logs" / "ray-head.log")
                state.ray_pid = head.pid
                state.gcs_address = address = f"127.0.0.1:{config.ray.gcs_port}"
                lc.write_state(config, state)
        if milvus is not None:
            wait_lite(config, milvus, milvus_log)
        state.url = deploy(config, address)
    except BaseException as exc:
        _stop_started(config, state)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        say(f"error: {exc}")
        return 1
    if state.ray_pid or state.milvus_pid:
        lc.write_state(config, state)
    say(f"ready in {time.monotonic() - started:.0f} s")
    print(f"OpenAI-compatible endpoint: {state.url}/v1  (models: {', '.join(m.id for m in config.models)})", flush=True)
    if args.detach:
        _disconnect()
        say("detached; `llm-serve status` shows it, `llm-serve down` stops it")
        return 0
    say("serving; press Ctrl-C to stop")
    _wait_for_signal()
    say("stopping ...")
    _shutdown_serve()
    _stop_started(config, state)
    say("stopped")
    return 0


def _split_cpus(config: Config, address: str | None) -> Any:
    """The engine/serving CPU split for a local CPU stack (`ray.isolate_serving_cpus`), applied to the
    config's engines; None where it does not apply. Said on the console either way when it was asked for."""
    from llm_serve.engine.machine import cpu_split

    if not config.ray.isolate_serving_cpus:
        return None
    engines = [m.engine for m in config.engine_models]
    if address is not None:
        reason = "Ray is not started here"
    elif not engines or any(e.accelerator != "cpu" for e in engines):
        reason = "not every engine runs on CPU"
    elif any(e.cpu_omp_threads_bind != "auto" for e in engines):
        reason = "an engine sets cpu_omp_threads_bind"
    elif any(e.tensor_parallel_size * e.pipeline_parallel_size != 1 for e in engines):
        reason = "an engine has several workers"
    else:
        split, reason = cpu_split()
        if split is not None:
            for engine in engines:
                engine.cpu_omp_threads_bind = split.engine_bind
                engine.cpu_affinity = ",".join(map(str, split.engine + split.serving))
            say(f"CPUs: {reason} (ray.isolate_serving_cpus)")
            return split
    say(f"CPUs: not split ({reason})")
    return None


@contextlib.contextmanager
def _on_cpus(cpus: tuple[int, ...] | None) -> Any:
    """Run this process (and what it starts meanwhile, which inherits it) on `cpus`, then restore."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


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

    config = load(args)
    state = lc.read_state(config)
    if state is None:
        say("nothing to stop: llm-serve is not up (no state under the llm-serve home)")
        return 0
    if state.up_pid and state.up_pid != os.getpid() and lc.pid_alive(state.up_pid):
        # A foreground `up` in another shell: let it drain Serve and stop its own Ray.
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.up_pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S + lc.STOP_GRACE_S
        while time.monotonic() < deadline and lc.pid_alive(state.up_pid):
            time.sleep(0.5)
    stopped = _stop_started(config, state)
    say(f"stopped llm-serve ({len(stopped)} process(es) under Ray pid {state.ray_pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from llm_serve import local_cluster as lc
    from llm_serve.deploy import endpoint_url, fetch_json

    config = load(args)
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


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="serve the OpenAI-compatible endpoint")
    up.add_argument("--detach", "-d", action="store_true", help="return once ready; stop later with `down`")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show whether the endpoint is up and ready")
    status.set_defaults(func=cmd_status)
    accept_config(up, down, status)
