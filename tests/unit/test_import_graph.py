"""No import cycles among our modules (services/, pipelines/, index/, common/), and imports run
one way between the layers: services -> pipelines -> index, each may use common (the shared leaf
types), and common uses none of them.

Every import counts, also one inside a function (a cycle hidden in a lazy import is still a
cycle: it only moves the failure to run time); imports under ``if TYPE_CHECKING:`` do not. An
edge goes to the module named (``from pkg import mod`` to ``pkg.mod`` when that is a module,
else to ``pkg``); a package's ``__init__`` re-exporting its submodules is the usual idiom and
not a cycle by itself, so a submodule does not depend on its package merely by being in it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "services", "index", "common")
LAYERS = {"services": 3, "pipelines": 2, "index": 1, "common": 0}  # an import goes to a lower layer only


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    mods = modules(root, packages)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in mods)
                continue
            base = node.module or ""
            if node.level:  # relative: from the module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in mods:
                    edges[name].add(target)
                elif base in mods:
                    edges[name].add(base)
    for name in edges:
        edges[name].discard(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        comp.append(member)
                        if member == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_no_import_cycles():
    edges = graph(ROOT)
    assert len(edges) > 50, "the scan found too few modules to mean anything"
    found = cycles(edges)
    assert not found, "import cycles (move the shared names to a leaf module):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_the_check_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "pipelines"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pipelines.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pipelines import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nfrom .a import thing\n"
                              "if TYPE_CHECKING:\n    from pipelines import d\n")
    (pkg / "d.py").write_text("import pipelines.c\n")
    found = cycles(graph(tmp_path, ("pipelines",)))
    assert found == [["pipelines.a", "pipelines.c", "pipelines.sub.b"]]  # d's edge back is TYPE_CHECKING-only


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one (or across to another package of the same layer)."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if a.split(".")[0] != b.split(".")[0] and LAYERS[a.split(".")[0]] <= LAYERS[b.split(".")[0]])


def test_imports_run_one_way_between_the_layers():
    edges = graph(ROOT)
    assert any(a.startswith("index.") and b.startswith("common.") for a, bs in edges.items() for b in bs)
    assert not upward(edges), "imports against the layers (services -> pipelines -> index -> common):\n" + \
        "\n".join(upward(edges))


def test_an_upward_import_is_caught(tmp_path):
    for pkg, body in (("common", "from index import store\n"), ("index", "def f():\n    import pipelines.x\n"),
                      ("pipelines", "from common import errors\n")):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        (tmp_path / pkg / ("store.py" if pkg == "index" else "x.py" if pkg == "pipelines" else "errors.py")
         ).write_text(body)
    found = upward(graph(tmp_path, ("common", "index", "pipelines")))
    assert found == ["common.errors -> index.store", "index.store -> pipelines.x"], found
