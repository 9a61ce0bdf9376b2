"""The layout of lipzoo.bounds (issue 23): no import circle (module level or inside functions), no module-level
mutable state, every module under ~600 lines with a docstring that says what it does."""

from __future__ import annotations

import ast
from pathlib import Path

import lipzoo

BOUNDS = Path(lipzoo.__file__).parent / "bounds"


def _imports(path: Path) -> set[str]:
    """The lipzoo.bounds modules ``path`` imports, at module level or anywhere inside it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("lipzoo.bounds."):
                out.add(node.module.split(".")[2])
            elif node.module == "lipzoo.bounds":
                out.update(a.name for a in node.names if (BOUNDS / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("lipzoo.bounds."))
    return out - {path.stem}


def test_no_import_circle_even_through_deferred_imports():
    graph = {p.stem: _imports(p) for p in BOUNDS.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError(f"import circle: {' -> '.join(trail + [node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


def test_no_module_level_mutable_state_and_small_documented_modules():
    for path in BOUNDS.glob("*.py"):
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name} has no module docstring"
        assert len(path.read_text().splitlines()) <= 650, f"{path.name} is over ~600 lines"
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(
                    getattr(node, "value", None), (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                # public constants (UPPER_CASE, never mutated) and __all__ are fine; a private or lower-case table
                # (a memo, a rate table) is state that makes a result depend on what ran before
                assert all(n == "__all__" or (n.isupper() and not n.startswith("_")) for n in names), \
                    f"{path.name}: module-level state {names}"
