"""The start-phase recorder: vLLM's log lines become the phase `llm-serve up` prints while it waits."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from llm_serve.config import parse_config
from llm_serve.deploy import waiting_for
from llm_serve.engine.pool import engine_deployment_name, engine_env, phase_path
from llm_serve.engine.start_phase import PHASE_FILE_ENV, PhaseRecorder, phase_of, read_phase


def test_vllm_messages_map_to_phases_and_others_do_not() -> None:
    assert phase_of("[backbone] Compiling model again due to a load failure from /x, reason: y").startswith(
        "compiling the model"
    )
    assert phase_of("Starting to load model /root/m...") == "loading the weights"
    assert phase_of("Route: /v1/models, Methods: GET") is None


def test_recorder_writes_the_latest_phase_and_up_reports_it(tmp_path: Path) -> None:
    config = parse_config({"home": str(tmp_path), "models": [{"id": "m1", "source": "smollm2-135m-instruct"}]})
    path = phase_path(config.home_path, "m1")
    assert engine_env(config.models[0], str(path))[PHASE_FILE_ENV] == str(path)
    started = time.time() - 1
    log = logging.getLogger("vllm.test_start_phase")
    handler = PhaseRecorder(path)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("Starting to load model %s", "/m")
        log.info("Warming up model for the compilation...")
        log.info("an unrelated line")
    finally:
        log.removeHandler(handler)
    phase, seconds = read_phase(path, started)
    assert phase.startswith("warming up the model") and seconds < 60
    assert read_phase(path, time.time() + 60) is None  # a file from an earlier start is not shown
    states = {engine_deployment_name("m1"): "UPDATING", "router": "HEALTHY", "embedder-x": "UPDATING"}
    line = waiting_for(config, states, started)
    assert line.startswith("waiting for m1: warming up the model") and "starting embedder-x" in line
    assert waiting_for(config, dict.fromkeys(states, "HEALTHY"), started) == ""
