"""Deploy the application onto a running Ray and wait, with progress, until it answers.

An engine replica takes minutes to start on a CPU (vLLM compiles the model), so the wait reports
each deployment's state as it changes and fails fast, with Serve's own message, when a deployment
fails instead of waiting out the timeout.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from llm_serve.config import Config

PROGRESS_EVERY_S = 15.0
POLL_S = 1.0


class DeployError(RuntimeError):
    """The application failed to deploy or did not become ready in time."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def endpoint_url(config: Config) -> str:
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    return f"http://{host}:{config.server.port}"


def deploy(config: Config, gcs_address: str, report: Callable[[str], None] = _say) -> str:
    """Connect to Ray at `gcs_address`, deploy, wait until /readyz is 200; return the endpoint URL."""
    import ray
    from ray import serve

    from llm_serve.app import build_app

    if not ray.is_initialized():
        ray.init(address=gcs_address, namespace="llm-serve", log_to_driver=False)
    serve.start(http_options={"host": config.server.host, "port": config.server.port})
    app = build_app(config, pull_models=False)
    report(f"deploying application '{config.app_name}' ({len(config.models)} model(s))")
    serve._run(app, _blocking=False, name=config.app_name, route_prefix=config.route_prefix)
    wait_running(config, report)
    url = endpoint_url(config)
    wait_http_ready(url, config.server.ready_timeout_s, report)
    return url


def waiting_for(config: Config, states: dict[str, str], started_at: float) -> str:
    """What the deployments that are not up yet are doing, where a starting engine says (its phase file)."""
    from llm_serve.engine.pool import engine_deployment_name, phase_path
    from llm_serve.engine.start_phase import read_phase

    parts = []
    for model in config.engine_models:
        name = engine_deployment_name(model.id)
        if states.get(name, "HEALTHY") == "HEALTHY":
            continue
        phase = read_phase(phase_path(config.home_path, model.id), started_at)
        parts.append(f"{model.id}: {phase[0]} ({phase[1]:.0f} s)" if phase else f"{model.id}: starting the replica")
    others = [n for n, s in sorted(states.items()) if s != "HEALTHY" and not n.startswith("engine-")]
    if others:
        parts.append("starting " + ", ".join(others))
    return "waiting for " + "; ".join(parts) if parts else ""


def wait_running(config: Config, report: Callable[[str], None] = _say) -> None:
    from ray import serve

    started = time.monotonic()
    started_at = time.time()
    deadline = started + config.server.ready_timeout_s
    last_states: tuple[dict[str, str], str] = ({}, "")
    last_progress = started
    while True:
        app = serve.status().applications.get(config.app_name)
        if app is not None:
            states = {name: d.status.value for name, d in app.deployments.items()}
            doing = waiting_for(config, states, started_at)
            key = (states, re.sub(r" \(\d+ s\)", "", doing))  # a new line on a change, not every second
            if key != last_states or time.monotonic() - last_progress > PROGRESS_EVERY_S:
                elapsed = time.monotonic() - started
                healthy = sum(s == "HEALTHY" for s in states.values())
                report(f"  [{elapsed:5.0f} s] {healthy}/{len(states)} deployments up; {doing or 'finishing'}")
                last_states, last_progress = key, time.monotonic()
            if app.status.value == "RUNNING":
                return
            if app.status.value == "DEPLOY_FAILED":
                details = "; ".join(
                    f"{n}: {d.message}" for n, d in app.deployments.items() if d.status.value != "HEALTHY"
                )
                raise DeployError(f"deployment failed: {app.message or details}")
        if time.monotonic() > deadline:
            raise DeployError(f"application not running after {config.server.ready_timeout_s:.0f} s")
        time.sleep(POLL_S)


def wait_http_ready(url: str, timeout_s: float, report: Callable[[str], None] = _say, path: str = "/readyz") -> None:
    """Poll `url` + `path` until it answers 200 (any OpenAI server answers /v1/models; ours /readyz)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(POLL_S)
    raise DeployError(f"{url}{path} did not answer 200 within {timeout_s:.0f} s (last: {last})")


def fetch_json(url: str, timeout_s: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
