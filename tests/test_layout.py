"""The package's layout is its architecture: imports point one way, never in a circle, and no
command's wing of ``ops/`` imports another's.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a late import hides
a cycle from the interpreter, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ckpttools"
# Lower layers never import higher ones; a module may import its own layer and any below it.
LAYERS = (
    ("ckpttools.entries", "ckpttools.errors", "ckpttools.keypaths", "ckpttools.units"),
    ("ckpttools.formats",),
    ("ckpttools.ops",),
    ("ckpttools.render",),
    ("ckpttools.cli", "ckpttools.api", "ckpttools.testing", "ckpttools.pytest_plugin",
     "ckpttools.__main__"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports (a package counts as its ``__init__``)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith("ckpttools") and target != name:
                out.add(target)
    # ``from ckpttools.ops.diff import pair`` names the package and the module; keep the module
    return {t for t in out if not any(o.startswith(t + ".") for o in out) or t == "ckpttools"} - {"ckpttools"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return len(LAYERS)  # ckpttools/__init__.py: the public API, above everything


def _wing(name: str) -> str | None:
    """``diagnose`` for ``ckpttools.ops.diagnose.causes``; None for the shared part of ops."""
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "ops" else None


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_imports_point_down() -> None:
    upward = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert upward == []


def test_no_wing_imports_another() -> None:
    crossing = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps
                if _wing(m) and _wing(d) and _wing(m) != _wing(d)]
    assert crossing == []


def test_shared_ops_import_no_wing() -> None:
    # what two wings share lives in ops/ itself, so it must not reach back into a wing
    reaching = [f"{m} -> {d}" for m, deps in _graph().items() for d in deps
                if m.startswith("ckpttools.ops.") and _wing(m) is None and _wing(d)]
    assert reaching == []


@pytest.mark.parametrize("source, expected", [
    ("from ckpttools.ops.diff import pair\n", {"ckpttools.ops.diff.pair"}),
    ("from . import causes\n", {"ckpttools.ops.diagnose.causes"}),
    ("from .error_text import ShapeMismatch\n", {"ckpttools.ops.diagnose.error_text"}),
    ("def f():\n    import ckpttools.ops.convert.verify\n", {"ckpttools.ops.convert.verify"}),
])
def test_import_reader_sees_every_form(tmp_path: Path, source: str, expected: set[str]) -> None:
    # the checks above are only as good as this reader: it must see relative and late imports
    path = tmp_path / "mod.py"
    path.write_text(source)
    known = set(_modules())
    assert _imports("ckpttools.ops.diagnose.evidence", path, known) == expected
