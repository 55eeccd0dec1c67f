"""The package's shape, read from its source with ``ast``: no import cycles (imports inside
functions count), no arrow from a lower layer to a higher one, modules and functions of a readable
size, and ``import segdistill`` / ``--help`` without the heavy optional packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "segdistill"

# Layers, lowest first. A module may import its own layer and those below, never one above.
# The first prefix that matches a module's name decides its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("version", "errors", "extras", "remote", "recipes", "config", "metrics", "failpoints", "fileio", "distributed", "runtime",
              "losses", "typed", "catalogue")),
    ("data, models", ("data", "models", "checkpoint")),
    ("engine, inference", ("engine", "inference", "deploy", "measure", "reports")),
    ("jobs", ("jobs",)),
    ("cli", ("cli", "__main__", "")),  # "": the package face, segdistill/__init__.py
]

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
# Exceptions to the limits (none now). This list only shrinks: a module or function that grows
# past the limit fails; one on the list that falls under it must be taken off.
LONG_MODULES: set[str] = set()
LONG_FUNCTIONS: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module an import of ``name`` (relative to the package) loads, if any."""
    while name not in modules:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source (top level or in functions)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    package = here if is_package else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif (node.module or "").split(".")[0] == "segdistill":
                base = []
            else:
                continue
            module = (node.module or "") if node.level else (node.module or "").removeprefix("segdistill").lstrip(".")
            stem = ".".join([*base, *([module] if module else [])])
            targets = [f"{stem}.{a.name}".lstrip(".") for a in node.names] + [stem]
            resolved = [t for t in targets[:-1] if t in modules] or [_resolve(stem, modules)]
            if node.level and stem not in modules and not any(t in modules for t in targets[:-1]):
                resolved = [f"<missing {stem}>"]  # a relative import of a module that does not exist
        elif isinstance(node, ast.Import):
            resolved = [_resolve(a.name.removeprefix("segdistill").lstrip("."), modules)
                        for a in node.names if a.name.split(".")[0] == "segdistill"]
        else:
            continue
        found.update(r for r in resolved if r is not None and r != name)
    # Importing a.b.c from outside package a.b runs the package faces a/__init__ and a/b/__init__
    # first (segdistill/__init__ imports nothing of its own until asked: left out).
    found |= {face for m in found if not m.startswith("<") for k in range(1, m.count(".") + 1)
              if not (name + ".").startswith((face := ".".join(m.split(".")[:k])) + ".")}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix and name.startswith(prefix + ".")):
                return rank
    raise AssertionError(f"segdistill.{name} is in no layer: add it to LAYERS in tests/test_architecture.py")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {a: {b for b in targets if b in graph} for a, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = _graph()
    assert "jobs.train" in graph["cli.commands"]
    assert "checkpoint" in graph["engine.train"]


def test_every_relative_import_names_a_module() -> None:
    missing = {a: b for a, targets in _graph().items() for b in targets if b.startswith("<missing")}
    assert missing == {}


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_arrow_from_a_lower_layer_to_a_higher_one() -> None:
    upward = [f"{a or 'segdistill'} ({LAYERS[_layer(a)][0]}) -> {b} ({LAYERS[_layer(b)][0]})"
              for a, targets in sorted(_graph().items()) for b in sorted(targets)
              if not b.startswith("<missing") and _layer(b) > _layer(a)]
    assert upward == []


def _functions(tree: ast.AST, prefix: str):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}.{node.name}", node.end_lineno - node.lineno + 1  # type: ignore[operator]
        if isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}.{node.name}")


def test_module_and_function_sizes() -> None:
    long_modules, long_functions = set(), set()
    for name, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.add(name)
        long_functions.update(f for f, n in _functions(ast.parse(text), name) if n > MAX_FUNCTION_LINES)
    assert long_modules - LONG_MODULES == set(), f"modules over {MAX_MODULE_LINES} lines"
    assert long_functions - LONG_FUNCTIONS == set(), f"functions over {MAX_FUNCTION_LINES} lines"
    assert LONG_MODULES - long_modules == set(), "now short enough: take them off LONG_MODULES"
    assert LONG_FUNCTIONS - long_functions == set(), "now short enough: take them off LONG_FUNCTIONS"


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


@pytest.mark.parametrize("code", ["import segdistill", "import segdistill.cli"])
def test_importing_the_package_loads_no_optional_runtime(code: str) -> None:
    assert _loaded_after(code) & {"av", "h5py", "onnx", "onnxruntime", "openvino", "torch"} == set()


def test_listing_the_models_loads_no_torch() -> None:
    code = ("import contextlib, io\nfrom segdistill.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['models']) == 0")
    assert "torch" not in _loaded_after(code)
