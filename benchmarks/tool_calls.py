"""How often a model produces a usable tool call through an OpenAI-compatible endpoint.

A small fixed set of requests (benchmarks/data/tool_calls.jsonl): each gives the model a few tools and a
user message that needs exactly one of them. For each `tool_choice` mode it counts the answers whose
`tool_calls` parse (the endpoint's tool parser found a call and its arguments are a JSON object), name the
expected function, and carry the required arguments; for `auto` it also counts plain-text answers, the
model declining to call. This is what chooses the tool-call format of a small model: run it against vLLM's
server or llm-serve with each candidate parser and chat template.

    .venv/bin/python benchmarks/tool_calls.py --url http://127.0.0.1:8000 [--modes auto required named]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "tool_calls.jsonl"
MODES = ("auto", "required", "named")


def load_cases(path: Path = DATA) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tool_choice(mode: str, expected: str) -> Any:
    if mode == "named":
        return {"type": "function", "function": {"name": expected}}
    return mode


def judge(message: Any, case: dict[str, Any]) -> str:
    """One answer's outcome: `correct`, `wrong_function`, `missing_arguments`, `bad_arguments` or `no_call`."""
    calls = message.tool_calls or []
    if not calls:
        return "no_call"
    call = calls[0].function
    if call.name != case["expected"]:
        return "wrong_function"
    try:
        arguments = json.loads(call.arguments)
    except (TypeError, ValueError):
        return "bad_arguments"
    if not isinstance(arguments, dict):
        return "bad_arguments"
    tool = next(t for t in case["tools"] if t["function"]["name"] == case["expected"])
    required = tool["function"].get("parameters", {}).get("required", [])
    return "correct" if all(key in arguments for key in required) else "missing_arguments"


def run(url: str, model: str, modes: list[str], key: str) -> dict[str, Any]:
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=120)
    cases = load_cases()
    summary: dict[str, Any] = {}
    for mode in modes:
        outcomes: dict[str, int] = {}
        for i, case in enumerate(cases, 1):
            try:
                response = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": case["question"]}],
                    tools=case["tools"],
                    tool_choice=tool_choice(mode, case["expected"]),
                    temperature=0,
                    max_tokens=128,
                )
                outcome = judge(response.choices[0].message, case)
            except openai.APIStatusError as exc:
                outcome = f"http_{exc.status_code}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            print(f"  {mode}: {i}/{len(cases)} {outcome}", flush=True)
        correct = outcomes.get("correct", 0) / len(cases)
        summary[mode] = {"cases": len(cases), "outcomes": outcomes, "correct_rate": correct}
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--key", default="none")
    parser.add_argument("--out", type=Path, help="write the summary here as JSON")
    args = parser.parse_args(argv)
    summary = run(args.url, args.model, args.modes, args.key)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
