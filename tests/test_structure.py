"""The package's shape: no import cycle among its modules, and one command line that lists every subcommand.

The import graph is read from the source (module-level ``import`` / ``from ... import`` statements, relative ones
resolved), not from ``sys.modules``, so an import hidden inside a function — the way optional stacks are loaded on
demand — does not count: only what runs at import time can form a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybridreduce", "analysis")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports at module level (a package import counts as its ``__init__``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.parse(path.read_text()).body:  # module level only
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    # A module importing its own package's __init__ (``from . import x``) is the normal way to reach a sibling:
    # the edge to the package itself is dropped when the name imported is a submodule.
    return {name: _imports(name, path, known) - {name.rpartition(".")[0]} for name, path in modules.items()}


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_one_command_line_lists_every_subcommand():
    """``python -m hybridreduce`` and the console script are one program, with the analysis subcommands."""
    out = subprocess.run(
        [sys.executable, "-m", "hybridreduce", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    for name in ("verify", "bench", "train-toy", "demo", "calibrate", "run", "merge", "analyze", "plot"):
        assert name in out, f"`python -m hybridreduce --help` does not list {name!r}:\n{out}"
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "hybridreduce"]
    assert script.value == "hybridreduce.cli:main"


#: The command-line modules: they parse, call and print; what they call lives in the library under public names.
COMMAND_LINES = ("hybridreduce.cli", "hybridreduce.finetune.cli", "analysis.cli")
#: What other modules may import from a command line: the program itself and its extension hook.
COMMAND_LINE_API = {"main", "build_parser", "SUBCOMMANDS_GROUP", "register"}


def _private_crossings(name: str, source: str) -> list[str]:
    """``module: name`` of every import (at any depth) in ``source`` that crosses a command line's boundary: a
    command line importing a private name, or another module importing from a command line anything but its API."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        base = name.split(".")[: len(name.split(".")) - node.level] if node.level else []
        module = ".".join(base + ([node.module] if node.module else []))
        for alias in node.names:
            private = alias.name.startswith("_") and alias.name != "__version__"
            if (name in COMMAND_LINES and private) or (
                module in COMMAND_LINES and module != name and alias.name not in COMMAND_LINE_API
            ):
                found.append(f"{name} imports {module}.{alias.name}")
    return found


def test_the_command_lines_only_parse_call_and_print():
    """Issue 27: bench formatting, calibration batches and model loading once lived in cli.py and were imported
    privately by lmms-eval, finetune and analysis; now nothing crosses a command line's boundary but its API."""
    crossings = [c for name, path in _modules().items() for c in _private_crossings(name, path.read_text())]
    assert not crossings, crossings


def test_the_command_line_check_can_fail():
    lmms = "from ..cli import DEFAULT_FRAMES, main\n"
    assert _private_crossings("hybridreduce.integrations.lmms_eval", lmms) == [
        "hybridreduce.integrations.lmms_eval imports hybridreduce.cli.DEFAULT_FRAMES"
    ]
    assert _private_crossings("hybridreduce.cli", "from .manifest import _parse_options\n") == [
        "hybridreduce.cli imports hybridreduce.manifest._parse_options"
    ]
    assert _private_crossings("hybridreduce.cli", "from .vlm import quiet_transformers\n") == []
