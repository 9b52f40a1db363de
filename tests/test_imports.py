"""Package structure: every module imports alone, and no top-level import cycle exists.

An import cycle works only in one import order, so a module that imports fine inside the
suite may fail for a user who imports it first; each module is imported in a fresh
interpreter. Cycles are found statically from the top-level imports (imports under
`if TYPE_CHECKING:` and inside functions are not executed at import time).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "onnxfix"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(name: str, path: Path) -> set[str]:
    """Package modules `name` imports when it is itself imported."""
    tree = ast.parse(path.read_text(), str(path))
    stack, found = list(tree.body), set()
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and not _is_type_checking(node):
            stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            found.update(subs)
            # `from pkg import submodule` needs only the submodule; a name defined in
            # pkg/__init__ needs that __init__ to have run to its end
            if not subs <= set(MODULES):
                found.add(node.module)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    for root in sorted(graph):
        if root in state:
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_import_scan_tells_a_submodule_from_a_name_of_the_package():
    assert "onnxfix.seeded" not in _top_level_imports("onnxfix.seeded.graph",
                                                     MODULES["onnxfix.seeded.graph"])
    assert "onnxfix.ops" in _top_level_imports("onnxfix.graph.find",
                                               MODULES["onnxfix.graph.find"])


def test_the_cycle_finder_finds_a_cycle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_top_level_import_cycle():
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items()}
    assert find_cycle(graph) is None


def test_the_ops_registry_needs_no_graph_module():
    """ops is the bottom layer: graph, passes and the check ask it, never the reverse."""
    graph = {name: _top_level_imports(name, path) for name, path in MODULES.items()}
    for name in (m for m in MODULES if m.startswith("onnxfix.ops")):
        assert not {m for m in graph[name] if m.startswith(("onnxfix.graph", "onnxfix.check",
                                                            "onnxfix.passes"))}, name


# Run in a subprocess that has loaded the heavy third-party libraries but no onnxfix module,
# then forks once per module: each child imports its module into an onnxfix-free interpreter
# (what matters for import order) without paying numpy/onnx/onnxruntime start-up each time.
_FORKER = """
import importlib, json, os, sys, traceback
import numpy, onnx, onnxruntime  # noqa: F401 - preloaded for speed; not onnxfix
assert not [m for m in sys.modules if m.startswith("onnxfix")]
results = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc()[-2000:] or "failed"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        results[name] = f.read().decode()
    os.waitpid(pid, 0)
print(json.dumps(results))
"""


# Modules of optional extras: (the package they need, the import error they then raise).
OPTIONAL = {
    "onnxfix.olive_pass": ("olive", "onnxfix.olive_pass needs olive-ai: pip install olive-ai"),
    "onnxfix.ir": ("onnx_ir", "onnxfix.ir needs onnx-ir >= 1.1: pip install 'onnxfix[ir]'"),
}


@pytest.fixture(scope="module")
def import_errors() -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", _FORKER, *sorted(MODULES)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_alone(module: str, import_errors: dict[str, str]):
    error = import_errors[module]
    if module in OPTIONAL and importlib.util.find_spec(OPTIONAL[module][0]) is None:
        # optional dependency: refused with the install hint, not a bare ModuleNotFoundError
        assert error.rstrip().endswith(f"ImportError: {OPTIONAL[module][1]}"), error
        return
    assert error == "", error
