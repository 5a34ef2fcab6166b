"""The package's layering, read from the source (AST): no import cycles, no import from a lower layer to a higher one,
no file over 400 lines, the engine under 900 lines. docs/architecture.md draws the same floors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tandem"

# floor of each top-level package: a module may import its own floor or lower ones
LAYERS = {
    "cli": 5, "api": 5,
    "pipelines": 4, "demos": 4,
    "engine": 3,
    "objectives": 2, "rewards": 2, "regularizers": 2, "evaluation": 2, "probes": 2, "merging": 2, "report": 2, "optim": 2,
    "distributed": 2,
    "models": 1,
    "data": 0, "config": 0, "schedules": 0, "io": 0, "errors": 0, "version": 0,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module prefix of a dotted name (``tandem.a.b.func`` -> ``tandem.a.b``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


def imports_of(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every tandem module ``mod`` imports, at module level or inside functions (lazy imports count)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule if one exists, else the package
        else:
            continue
        for n in names:
            if n.startswith("tandem"):
                target = resolve(n, known)
                if target and target != mod:
                    out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_package_has_a_floor():
    top = {m.split(".")[1] for m in modules() if m.count(".") >= 1}
    assert top <= set(LAYERS), f"packages without a floor in LAYERS: {sorted(top - set(LAYERS))}"


def test_no_upward_imports():
    bad = []
    for src, targets in graph().items():
        ls = layer(src)
        for t in targets:
            lt = layer(t)
            if ls is not None and lt is not None and lt > ls:
                bad.append(f"{src} (floor {ls}) imports {t} (floor {lt})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_and_upward_detection_work():
    """The checks themselves fail on a planted cycle and a planted upward import."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    known = {"tandem.engine.x": Path("x"), "tandem.cli.y": Path("y")}
    assert resolve("tandem.cli.y.func", known) == "tandem.cli.y"
    assert layer("tandem.cli.y") > layer("tandem.engine.x")


@pytest.mark.parametrize("limit", [400])
def test_no_file_over_400_lines(limit):
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > limit}
    assert not long, f"files over {limit} lines: {long}"


def test_engine_under_900_lines():
    total = sum(len(p.read_text().splitlines()) for p in (PKG / "engine").rglob("*.py"))
    assert total < 900, f"tandem/engine has {total} lines"


def test_no_probing_dispatch():
    """No ``hasattr`` probing or class-name dispatch in the engine and pipelines: the method table and typed
    protocols decide."""
    bad = []
    for p in list((PKG / "engine").rglob("*.py")) + list((PKG / "pipelines").rglob("*.py")):
        text = p.read_text()
        for needle in ("hasattr(", "__name__ ==", "type(regularizer)", "type(objective)"):
            if needle in text:
                bad.append(f"{p.relative_to(SRC)}: {needle}")
    assert not bad, bad
