"""The floor plan, enforced: which package may import which, and no import cycles between modules.

Every import of every module counts, function-local ones too (they are how a wrong-way arrow hides). The
floors (README, Development): core < io < labels; core < models < training, inference; samples on io;
objects on io (training uses it for the object boundary class, inference for the objects' size); sharing (bioimage.io, model files, the
model library) on models and io, below training and inference; guidance ("where to paint next") on labels
and inference, below cli; cli on all engine packages; _napari on everything, imported by nothing (the CLI's ``gui`` loads it by name).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_medseg"

#: package -> the project packages it may import (besides itself and the top-level ``napari_medseg``)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "io": {"core"},
    "labels": {"core", "io"},
    "models": {"core"},
    "training": {"core", "io", "models", "objects", "sharing"},
    "inference": {"core", "io", "models", "objects", "sharing"},
    "samples": {"core", "io"},
    "objects": {"core", "io"},
    "sharing": {"core", "io", "models"},
    "guidance": {"core", "io", "labels", "models", "inference", "sharing"},
    "cli": {"core", "io", "labels", "models", "training", "inference", "samples", "objects", "sharing", "guidance"},
    "_napari": {"core", "io", "labels", "models", "training", "inference", "samples", "objects", "sharing",
                "guidance"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs or [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_floor():
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(ALLOWED), f"packages without a rule in ALLOWED: {rooms ^ set(ALLOWED)}"


def test_packages_import_only_the_floors_below():
    wrong = sorted(f"{a} -> {b}" for a, bs in _graph().items() for b in bs
                   if _room(b) not in {"", _room(a)} and _room(b) not in ALLOWED.get(_room(a), set()))
    assert not wrong, "imports that run against the floor plan:\n" + "\n".join(wrong)


def test_nothing_imports_the_napari_shell():
    into_gui = sorted(f"{a} -> {b}" for a, bs in _graph().items() for b in bs
                      if _room(b) == "_napari" and _room(a) != "_napari")
    assert not into_gui, into_gui


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_module_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_no_cycles_between_rooms():
    """Rooms are the packages and the sub-packages of the napari shell (widgets, jobs, painting, contrib)."""

    def room(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[1:3]) if len(parts) > 3 and parts[1] == "_napari" else _room(m)

    rooms: dict[str, set[str]] = defaultdict(set)
    for a, bs in _graph().items():
        for b in bs:
            if room(a) != room(b) and room(b):
                rooms[room(a)].add(room(b))
    cycles = _cycles(dict(rooms))
    assert not cycles, f"rooms that import each other: {cycles}"


@pytest.mark.parametrize("source, expected", [
    ("from napari_medseg.core import errors", {"napari_medseg.core.errors"}),
    ("def f():\n    from napari_medseg.io.reader import open_path", {"napari_medseg.io.reader"}),
    ("import napari_medseg.labels.store", {"napari_medseg.labels.store"}),
    ("from ..core.source import ImageSource", {"napari_medseg.core.source"}),
])
def test_the_checker_sees_every_kind_of_import(tmp_path, source, expected):
    """The rule is only as good as the parser: absolute, relative, dotted and function-local imports."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    modules = _modules()
    assert _imports("napari_medseg.training.mod", path, modules) == expected


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
