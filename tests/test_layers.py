"""The layers stay apart: kernels at the bottom, no import cycle anywhere.

Every ``import`` in the package's source, at module level or inside a function (a lazy import
hides a cycle, it does not remove it), becomes an edge of a graph over the package's modules;
``kernels/`` is ``fastlstm.kernels``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fastlstm": ROOT / "fastlstm", "fastlstm.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports (absolute names; relative imports resolved)."""
    is_package = path.name == "__init__.py"
    base = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                module = f"{parent}.{node.module}" if node.module else parent
            else:
                module = node.module
            for alias in node.names:
                # "from package import module" depends on the submodule, not on the package
                # (a parent package is imported first for any submodule: not an edge).
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return found


def _graph() -> dict[str, set[str]]:
    return {
        name: {m for m in _imports(name, path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def test_kernels_import_torch_triton_and_their_own_files_only():
    allowed_roots = {"torch", "triton", "__future__"}
    for name, path in MODULES.items():
        if not name.startswith("fastlstm.kernels"):
            continue
        for module in _imports(name, path):
            root = module.split(".")[0]
            if module.startswith("fastlstm.kernels") or root in allowed_roots:
                continue
            assert root not in ("fastlstm", "kernels"), f"{name} imports {module} (upward)"
            __import__(root)  # anything else must be the standard library
            assert root in __import__("sys").stdlib_module_names, f"{name} imports {module}"


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_ops_never_import_the_model_trainer_or_bench():
    upper = ("fastlstm.models", "fastlstm.train", "fastlstm.bench", "fastlstm.data")
    lower = ("fastlstm.kernels", "fastlstm.backends", "fastlstm.functional", "fastlstm.direction")
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith(lower):
            bad = [t for t in targets if t.startswith(upper)]
            assert not bad, f"{name} imports {bad}"
