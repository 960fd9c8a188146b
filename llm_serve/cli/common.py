"""What every command shares: messages on stderr, and the config the command runs on."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llm_serve.config import CONFIG_ENV, Config, load_config


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load(args: argparse.Namespace) -> Config:
    """The config named by --config (or $LLM_SERVE_CONFIG, or the embedded default); a named file is
    passed on to child processes through the environment."""
    config = load_config(args.config)
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    return config


def accept_config(*leaves: argparse.ArgumentParser) -> None:
    """`llm-serve up --config X` as well as `llm-serve --config X up`."""
    for leaf in leaves:
        leaf.add_argument("--config", "-c", default=argparse.SUPPRESS, help="YAML config file")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
