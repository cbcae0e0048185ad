"""The package layout: stages in data-flow order, imports only downward, no circles.

The stage order is written here once. A module may import from its own stage or from a
stage listed before it; the flat API (``__init__``) and ``__main__`` sit above every stage.
The imports are read from the source with :mod:`ast` (deferred imports inside functions
count too), so this test needs no import of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "segrenorm"

#: Stages, lowest first. Foundation modules import nothing from the rest of the package.
STAGES: tuple[tuple[str, ...], ...] = (
    ("errors", "_version", "atomic", "vocabulary"),
    ("config",),
    ("volumes",),
    ("simulate",),
    ("data",),
    ("models",),
    ("training",),
    ("harmonize",),
    ("export",),
    ("evaluate",),
    ("report",),
    ("workflows",),
    ("cli",),
    ("__main__", "__init__"),
)
MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 450


def stage_of(module: str, stages: tuple[tuple[str, ...], ...] = STAGES) -> int:
    """Index of the stage holding ``segrenorm.<first>...`` (the package itself is the API)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(stages):
        if head in names:
            return index
    raise AssertionError(f"{module}: its top-level name {head!r} is in no stage of STAGES")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """The ``segrenorm`` modules that ``path`` imports (``from X import y`` counts as X, or X.y
    where that is a module of the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    known = {module_name(p, root) for p in root.rglob("*.py")}
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "segrenorm")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "segrenorm":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    found.discard(this)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in sorted(root.rglob("*.py"))}


def upward_imports(
    graph: dict[str, set[str]], stages: tuple[tuple[str, ...], ...] = STAGES
) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "segrenorm" and stage_of(module, stages) < len(stages) - 1:
                bad.append(f"{module} imports the package's __init__")
            elif stage_of(target, stages) > stage_of(module, stages):
                bad.append(f"{module} imports {target}, a later stage")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (module-level and deferred alike)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _package_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A sub-package's __init__ is loaded by Python on the way to its modules; only circles
    # between modules that name each other count.
    return {m: {t for t in ts if t != "segrenorm"} for m, ts in graph.items() if m != "segrenorm"}


def test_every_module_is_in_a_stage() -> None:
    for module in import_graph():
        stage_of(module)


def test_no_module_imports_a_later_stage_or_the_package_init() -> None:
    assert upward_imports(import_graph()) == []


def test_the_package_has_no_import_circle() -> None:
    assert find_cycle(_package_imports(import_graph())) is None


def test_few_top_level_modules_and_no_long_file() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_checks_catch_what_they_guard(tmp_path: Path) -> None:
    root = tmp_path / "segrenorm"
    (root / "data").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "__init__.py").write_text("")
    (root / "data" / "__init__.py").write_text("")
    (root / "models" / "__init__.py").write_text("")
    (root / "errors.py").write_text("import segrenorm\n")
    (root / "data" / "a.py").write_text("from segrenorm.models.b import f\n")
    (root / "models" / "b.py").write_text("def f():\n    from ..data import a\n")
    graph = import_graph(root)
    assert graph["segrenorm.models.b"] == {"segrenorm.data.a"}
    assert upward_imports(graph) == [
        "segrenorm.data.a imports segrenorm.models.b, a later stage",
        "segrenorm.errors imports the package's __init__",
    ]
    assert find_cycle(_package_imports(graph)) == [
        "segrenorm.data.a",
        "segrenorm.models.b",
        "segrenorm.data.a",
    ]
    with pytest.raises(AssertionError, match="'plugins' is in no stage"):
        stage_of("segrenorm.plugins.x")
