"""What a starting engine replica is doing, so `llm-serve up` can say what it is waiting for.

Why: an engine's start is a minute or more of silence on a small CPU (process start, weights, then
torch.compile), and Serve only reports "UPDATING". vLLM logs each phase in its own processes (the
replica, the engine core, its worker), so a logging handler on vLLM's logger, installed by our
`vllm.general_plugins` entry point in each of them (engine/vllm_plugin.py), writes the latest phase to
a small file that `up` reads while it waits. The file lives on the replica's node: on a multi-node
cluster `up` shows the phase of replicas on its own node only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

PHASE_FILE_ENV = "LLM_SERVE_ENGINE_PHASE_FILE"
# A substring of one of vLLM 0.32's log messages, and the phase it starts; later phases come later here.
PHASES: tuple[tuple[str, str], ...] = (
    ("Initializing a V1 LLM engine", "starting the engine core"),
    ("Starting to load model", "loading the weights"),
    ("Warming up model for the compilation", "warming up the model (compiling it, unless enforce_eager)"),
    ("Compiling model again due to a load failure", "compiling the model (torch.compile; its cache did not load)"),
    ("Directly load AOT compilation", "loading the compiled model from the cache"),
    ("Warming up done", "allocating the KV cache"),
    ("init engine (profile, create kv cache, warmup model) took", "starting the server"),
)
_installed = False


def phase_of(message: str) -> str | None:
    return next((phase for needle, phase in PHASES if needle in message), None)


def write_phase(path: Path, phase: str) -> None:
    """Atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"phase": phase, "since": time.time(), "pid": os.getpid()}))
    tmp.replace(path)


class PhaseRecorder(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(level=logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # progress reporting must never break the engine
            phase = phase_of(record.getMessage())
            if phase is not None:
                write_phase(self.path, phase)


def install_from_env() -> None:
    """Attach the recorder to vLLM's logger when the replica was started with a phase file (idempotent)."""
    global _installed
    path = os.environ.get(PHASE_FILE_ENV)
    if _installed or not path:
        return
    logging.getLogger("vllm").addHandler(PhaseRecorder(Path(path)))
    _installed = True


def read_phase(path: Path, started_after: float) -> tuple[str, float] | None:
    """(phase, seconds in it) written since `started_after` (an epoch time), or None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    since = float(data.get("since", 0))
    if since < started_after:
        return None  # a file left by an earlier start
    return str(data.get("phase", "")), max(0.0, time.time() - since)
