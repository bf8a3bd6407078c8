"""The layout's rules, checked on the source (no import needed): no import circle between qexp's modules, and no
package imports one above it.  Every import counts, including those inside functions (lazy imports are a speed
choice, not a licence to reach upwards)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qexp"
# lowest first: a package may import its own layer's packages only where listed in SIDEWAYS, and any lower layer
LAYERS = [("common",), ("quant",), ("models", "tasks"), ("config", "train"), ("integer",), ("kinds",), ("experiment",),
          ("report", "bench"), ("cli", "__init__")]
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
SIDEWAYS = {("tasks", "models"), ("train", "config")}  # allowed same-layer imports (none may form a circle)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """The qexp modules ``path`` imports (``from .x import y`` counts as ``x.y`` when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "qexp"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "qexp":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return {m for m in out if m != name}


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}
GRAPH = {m: imports(p) for m, p in MODULES.items()}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    assert {top(m) for m in MODULES} <= set(RANK), {top(m) for m in MODULES} - set(RANK)


def test_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n in GRAPH and not state.get(n):
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            visit(m)


def test_no_upward_import():
    bad = []
    for m, deps in GRAPH.items():
        for d in deps:
            a, b = top(m), top(d)
            if a == b or (a, b) in SIDEWAYS or b == "__init__" and d == "qexp":
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{m} imports {d} ({a} is not above {b})")
    assert not bad, "\n".join(sorted(bad))


def test_the_quantization_core_imports_only_itself_and_common():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() if top(m) == "quant" for d in deps
           if top(d) not in ("quant", "common")]
    assert not bad, bad


@pytest.mark.parametrize("fake", [("quant", "experiment"), ("quant", "quant.sites")])
def test_the_checks_catch_a_violation(fake, monkeypatch):
    """The walker sees an upward import and a circle when one is planted (so the checks above can fail)."""
    src, dst = fake
    a = next(m for m in GRAPH if m.startswith(f"qexp.{src}."))
    b = next(m for m in GRAPH if m.startswith(f"qexp.{dst}"))
    monkeypatch.setitem(GRAPH, a, GRAPH[a] | {b})
    if dst == "experiment":
        with pytest.raises(AssertionError, match="is not above"):
            test_no_upward_import()
    else:
        monkeypatch.setitem(GRAPH, b, GRAPH[b] | {a})
        with pytest.raises(AssertionError, match="import circle"):
            test_no_import_circle()
