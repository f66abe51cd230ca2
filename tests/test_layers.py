"""The one-way dependency rule (docs/design.md, section 6): scripts -> experiments -> library.

The library (models/, dataset.py, evaluation/, unlearn/, audits/) computes and never reads flags, writes
run records or talks to MLflow; the application layer (experiments/, utils.py) never imports a
script. Every import is walked, those inside functions too, so a cycle cannot be dodged by
importing late."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = {"models", "dataset", "evaluation", "unlearn", "audits"}
# what each first-party unit may import from the first party (its own name included)
ALLOWED = {
    "models": {"models"},
    "dataset": {"dataset"},
    "evaluation": {"evaluation"},
    "unlearn": {"unlearn", "models", "evaluation", "dataset"},
    "audits": {"audits", "unlearn", "models", "evaluation", "dataset"},
    "utils": LIBRARY | {"utils"},
    "experiments": LIBRARY | {"utils", "experiments"},
}
# third-party packages the library must not touch: the tracking store and the tuner belong to the scripts
NOT_IN_LIBRARY = {"mlflow", "optuna", "optuna_dashboard"}


def first_party() -> set[str]:
    names = {p.stem for p in REPO.glob("*.py")}
    return names | {p.parent.name for p in REPO.glob("*/__init__.py")}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every import in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.ImportFrom):  # relative: within its own package
            found.append((node.lineno, path.relative_to(REPO).parts[0]))
    return found


def files_of(unit: str) -> list[Path]:
    return sorted((REPO / unit).rglob("*.py")) if (REPO / unit).is_dir() else [REPO / f"{unit}.py"]


def violations(unit: str, ours: set[str]) -> list[str]:
    bad = []
    for path in files_of(unit):
        for line, name in imports_of(path):
            wrong = (name in ours and name not in ALLOWED[unit]) or (unit in LIBRARY and name in NOT_IN_LIBRARY)
            if wrong:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_no_module_imports_against_the_layers(unit):
    assert violations(unit, first_party()) == []


def test_the_walk_finds_an_upward_import_even_inside_a_function(tmp_path, monkeypatch):
    pkg = tmp_path / "evaluation"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "late.py").write_text("import torch\n\ndef f():\n    from experiments import tracking\n    import mlflow\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    assert violations("evaluation", first_party()) == ["evaluation/late.py:4 imports experiments",
                                                       "evaluation/late.py:5 imports mlflow"]


def test_the_root_holds_scripts_and_only_the_two_library_modules_the_papers_name_there():
    """A new library module goes into a package whose name says what it is, not beside the scripts."""
    modules = {p.stem for p in REPO.glob("*.py") if '__name__ == "__main__"' not in p.read_text()}
    assert modules == {"dataset", "utils"}
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages == set(ALLOWED) - {"dataset", "utils"}


def test_no_test_module_imports_another():
    """Shared helpers and fixtures live in tests/conftest.py."""
    tests = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    bad = [f"{p.name}:{line} imports {name}" for p in sorted((REPO / "tests").glob("test_*.py"))
           for line, name in imports_of(p) if name in tests]
    assert bad == []
