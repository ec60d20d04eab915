"""Import hygiene: every module imports on its own, and the package has no import cycles.

A cycle hidden behind an import inside a function still couples the two sides (the late import
runs, and can fail, at call time), so the sub-package check counts those imports too. Imports
under `if TYPE_CHECKING:` are ignored: they never run."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "amd_llama4"

# The cycles issue 13 found (imports inside functions included) and how they were cut: the Ray
# worker/executor moved from `parallel` into `engine.tp` (engine<->parallel, model<->parallel); the
# native extension's facts left platform.info() (platform<->ops); checkpoint conversion and the FP8
# reports moved from `quant` to `tools` (model<->quant). Named so a regression says which one.
FORMER_CYCLES = [("engine", "parallel"), ("model", "parallel"), ("platform", "ops"), ("model", "quant")]


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((ROOT / PKG).rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, in_functions: bool) -> dict[str, int]:
    """Package modules that importing `name` runs: {module: line}. `import a.b.c` also runs the
    `a` and `a.b` packages; a module's own parent packages are left out (already importing)."""
    tree = ast.parse(path.read_text(), str(path))
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            mod = ".".join(parts[:i])
            if mod in MODULES and mod != name and not name.startswith(mod + "."):
                found.setdefault(mod, line)

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if in_functions:
                    visit(s.body)
                continue
            if isinstance(s, ast.If) and "TYPE_CHECKING" in ast.unparse(s.test):
                visit(s.orelse)
                continue
            if isinstance(s, ast.Import):
                for a in s.names:
                    add(a.name, s.lineno)
            elif isinstance(s, ast.ImportFrom):
                mod = s.module or ""
                if s.level:
                    mod = ".".join(base[:len(base) - s.level + 1] + ([mod] if mod else []))
                for a in s.names:  # `from pkg import submodule` imports the submodule
                    add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod, s.lineno)
            for field in ("body", "orelse", "finalbody"):
                visit([x for x in getattr(s, field, None) or [] if isinstance(x, ast.stmt)])
            for h in getattr(s, "handlers", None) or []:
                visit(h.body)

    visit(tree.body)
    return found


def _strong_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PKG


def _subpackage_edges() -> dict[tuple[str, str], list[str]]:
    """(from, to) sub-package -> the import sites, with imports inside functions counted."""
    edges: dict[tuple[str, str], list[str]] = {}
    for name, path in MODULES.items():
        found = _imports(name, path, in_functions=True)
        for target, line in found.items():
            a, b = _subpackage(name), _subpackage(target)
            deeper = any(t.startswith(target + ".") and ln == line for t, ln in found.items())
            if a != b and PKG not in (a, b) and not deeper:  # name `pkg.mod`, not also `pkg`
                edges.setdefault((a, b), []).append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return edges


def test_module_list_is_the_package():
    assert len(MODULES) > 50 and f"{PKG}.serve.app" in MODULES and f"{PKG}.platform" in MODULES


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """One interpreter; before each module, every amd_llama4 module is dropped from sys.modules so
    that this module is imported first (torch and other third-party modules stay loaded)."""
    script = (
        "import importlib, json, sys, traceback\n"
        "import torch\n"
        "names = json.loads(sys.argv[1]); failed = {}\n"
        "for name in names:\n"
        f"    for k in [k for k in sys.modules if k == {PKG!r} or k.startswith({PKG!r} + '.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException:\n"
        "        failed[name] = traceback.format_exc(limit=-4)\n"
        "print('RESULT', json.dumps({'imported': len(names) - len(failed), 'failed': failed}))\n")
    names = sorted(MODULES)
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(names)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"import subprocess failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    res = json.loads(lines[-1][len("RESULT "):])
    report = "\n".join(f"--- {n} ---\n{tb}" for n, tb in res["failed"].items())
    assert not res["failed"], f"{len(res['failed'])} module(s) fail when imported first:\n{report}"
    assert res["imported"] == len(names)


def test_no_module_cycle_at_import_time():
    """Module-level imports (what `import x` runs) form no cycle."""
    graph = {n: set(_imports(n, p, in_functions=False)) for n, p in MODULES.items()}
    assert _strong_components(graph) == []


@pytest.mark.parametrize("a,b", FORMER_CYCLES, ids=[f"{a}<->{b}" for a, b in FORMER_CYCLES])
def test_former_subpackage_cycle_stays_gone(a, b):
    edges = _subpackage_edges()
    graph: dict[str, set[str]] = {}
    for x, y in edges:
        graph.setdefault(x, set()).add(y)
    cycle = next((c for c in _strong_components(graph) if a in c and b in c), None)
    if cycle is not None:
        sites = [f"{x} -> {y}: " + "; ".join(edges[x, y]) for x, y in sorted(edges)
                 if x in cycle and y in cycle]
        pytest.fail(f"sub-packages {cycle} import each other; cut one direction:\n  " + "\n  ".join(sites))


def test_no_subpackage_cycle():
    """The sub-packages are layered (imports inside functions included)."""
    graph: dict[str, set[str]] = {}
    for x, y in _subpackage_edges():
        graph.setdefault(x, set()).add(y)
    assert _strong_components(graph) == []


def test_cycle_finder_finds_a_cycle():
    """The checks above would pass vacuously if the finder never found anything."""
    assert _strong_components({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strong_components({"a": {"b"}, "b": set()}) == []
