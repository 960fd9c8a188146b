"""The house rules of docs/architecture.md, checked on the source so that they stay true.

- the packages of llm_serve import each other without a cycle (router may use engine, rag, eval,
  prompts and telemetry; none of them may use router);
- every import of Ray Serve LLM's private package sits in llm_serve/engine/ray_llm.py;
- no module is over ~500 lines except the declarative config.py.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llm_serve"
PRIVATE_RAY_LLM = "ray.llm._internal"
RAY_LLM_MODULE = PACKAGE / "engine" / "ray_llm.py"
MAX_LINES = 500
EXEMPT_FROM_SIZE = {PACKAGE / "config.py"}


def _unit(path: Path) -> str:
    """The package a module belongs to (`router`, `rag`, ...), or the top-level module's own name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    units = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _unit(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "llm_serve" and len(parts) > 1 and parts[1] in units and parts[1] != source:
                graph[source].add(parts[1])
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_packages_import_each_other_without_a_cycle() -> None:
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    for package in ("engine", "rag", "eval", "prompts", "telemetry"):
        assert "router" not in graph.get(package, set()), f"llm_serve.{package} imports llm_serve.router"


def test_the_cycle_check_sees_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_private_ray_llm_imports_only_behind_one_module() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path != RAY_LLM_MODULE and PRIVATE_RAY_LLM in path.read_text()
    ]
    assert offenders == []


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if path not in EXEMPT_FROM_SIZE
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
