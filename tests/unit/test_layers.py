"""The package layers of docs/architecture.md, checked against the code: every import in src/ (at module
level or inside a function) points down the layer order or within its own package, there is no import
cycle, and the doc's module map lists exactly the modules that exist."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"


def doc_block(tag: str) -> str:
    m = re.search(rf"```{tag}\n(.*?)```", DOC.read_text(), re.S)
    assert m, f"{DOC.name} has no ```{tag} block"
    return m.group(1)


def layers() -> list[list[str]]:
    """Top line = top layer; packages sharing a line are peers that may not import each other."""
    rows = [line.split("#")[0].split() for line in doc_block("layers").splitlines()]
    return [r for r in rows if r][::-1]  # bottom first


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports(path: Path, known: set[str]):
    """(line, imported elt module) for every import statement in the file, at any depth."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from pkg import mod`` imports the module pkg.mod when it exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "elt" or t.startswith("elt."):
                yield node.lineno, t


def rank_of(mod: str, order: list[list[str]]) -> tuple[int, str]:
    """(layer index, package) of the deepest listed package that contains ``mod``."""
    best = None
    for i, row in enumerate(order):
        for pkg in row:
            if mod == pkg or mod.startswith(pkg + "."):
                if best is None or len(pkg) > len(best[1]):
                    best = (i, pkg)
    assert best is not None, f"{mod} is in no layer of {DOC.name}"
    return best


def test_imports_point_down_the_layers():
    order, mods = layers(), modules()
    bad = []
    for mod, path in mods.items():
        rank, pkg = rank_of(mod, order)
        for line, target in imports(path, set(mods)):
            t_rank, t_pkg = rank_of(target, order)
            if t_pkg == pkg or t_rank < rank:
                continue
            why = "a peer package" if t_rank == rank else "a higher layer"
            bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports {target} ({why}: {t_pkg})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    mods = modules()
    graph = {m: {t for _, t in imports(p, set(mods)) if t in mods and t != m} for m, p in mods.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_architecture_doc_lists_every_module():
    listed = set(re.findall(r"^(elt(?:\.\w+)*)\s", doc_block("modules"), re.M))
    existing = set(modules())
    assert not existing - listed, f"modules missing from {DOC.name}: {sorted(existing - listed)}"
    assert not listed - existing, f"{DOC.name} lists modules that do not exist: {sorted(listed - existing)}"
