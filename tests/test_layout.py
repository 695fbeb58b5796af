"""The references the tests check the library against stay outside it: no library module imports them."""

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
