"""The layout the architecture promises: references outside the library, small modules, docstrings, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import taskindex

PACKAGE = Path(taskindex.__file__).parent
PRIVATE = "taskindex._testing"


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module a file imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def library_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "_testing" not in p.relative_to(PACKAGE).parts]


def test_no_library_module_imports_the_test_references():
    files = library_files()
    assert len(files) > 10  # the walk found the package
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith(PRIVATE))
                 for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_reference_fisher_depends_on_no_library_module():
    """The naive loop and the closed form must not share code with the engine they check."""
    used = imported_modules(PACKAGE / "_testing" / "reference.py")
    assert "torch" in used
    assert sorted(m for m in used if m.startswith("taskindex")) == []


def test_the_import_walk_sees_relative_imports():
    """The checker itself can fail: relative imports of the references, from any depth, are found."""
    top = imported_modules(PACKAGE / "fake.py", "from ._testing import reference\nfrom . import _testing\n")
    assert {PRIVATE + ".reference", PRIVATE} <= top
    deep = imported_modules(PACKAGE / "index" / "fake.py", "from .._testing.reference import naive_per_sample\n")
    assert PRIVATE + ".reference" in deep


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_modules_stay_small_enough_to_read():
    """No module over 400 lines, no function over 60, and TaskIndex a facade under 400 lines."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > 400:
            too_long.append(f"{path.relative_to(PACKAGE)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}()")
            if isinstance(node, ast.ClassDef) and node.name == "TaskIndex":
                assert node.end_lineno - node.lineno < 400, node.end_lineno - node.lineno
    assert too_long == []


def test_every_module_says_what_it_is_for_in_its_first_line():
    missing = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()]
    assert missing == []


def _module_level_imports(path: Path) -> set[str]:
    """The taskindex modules a file imports when it is imported (not inside functions or TYPE_CHECKING)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taskindex"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").is_file()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("taskindex"))
    return found


def test_no_circular_imports():
    graph = {_module_name(p): _module_level_imports(p) for p in PACKAGE.rglob("*.py")}
    assert len(graph) > 30
    state: dict[str, int] = {}

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := cycle_from(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            assert cycle_from(module, []) is None
