"""Stopping what `up` started touches exactly that process tree, including children that left its group."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from llm_serve.config import Config
from llm_serve.local_cluster import RunState, clear_state, pid_alive, read_state, stop_tree, tree_pids, write_state

# A parent that starts one child in its own group and one in a new session (as Ray's workers do).
SPAWNER = """
import os, subprocess, sys, time
a = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
b = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print(a.pid, b.pid, flush=True)
time.sleep(300)
"""


def test_stop_tree_ends_the_tree_and_nothing_else() -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    head = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child_a, child_b = (int(x) for x in head.stdout.readline().split())
        assert set(tree_pids(head.pid)) == {head.pid, child_a, child_b}
        started = time.monotonic()
        stopped = stop_tree(head.pid, grace_s=5)
        assert set(stopped) == {head.pid, child_a, child_b}
        head.wait(timeout=5)
        assert not pid_alive(child_a) and not pid_alive(child_b)
        assert time.monotonic() - started < 5, "SIGTERM was enough; no need to wait out the grace period"
        assert pid_alive(bystander.pid), "a process outside the tree is left alone"
    finally:
        bystander.kill()
        head.kill()


def test_stop_tree_of_a_finished_process_is_a_no_op() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert stop_tree(proc.pid) == []


def test_state_roundtrip(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_SERVE_HOME", str(tmp_path))
    config = Config()
    assert read_state(config) is None
    state = RunState(
        ray_pid=1,
        gcs_address="127.0.0.1:1",
        temp_dir="/t",
        url="http://x",
        app_name="a",
        config_path=None,
        started_at=0.0,
    )
    write_state(config, state)
    assert read_state(config) == state
    clear_state(config)
    assert read_state(config) is None
