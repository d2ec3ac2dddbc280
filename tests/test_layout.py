"""The layout docs/architecture.md describes, as checks a change cannot quietly break: every module says
what it exports (`__all__`), tests and scripts import only those names, the recipes/ top level holds only
the entry points, no module grows past 300 lines, and every file path the README and docs name exists.
(Which package may import which is import-linter's job: pyproject.toml, run by .ci/run.)"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("recipes", "callbacks", "modules", "hydra_plugins")
ENTRY_POINTS = {"train", "evaluate", "export", "generate", "attack", "summarize"}
MAX_LINES = 300


def project_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((REPO / root).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def declared_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return None


@pytest.mark.parametrize("path", list(project_files(*PACKAGES)), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_declares_what_it_exports(path: Path) -> None:
    names = declared_all(path)
    assert names is not None, f"{path.relative_to(REPO)} has no __all__"
    module = importlib.import_module(module_name(path))
    missing = [n for n in names if not hasattr(module, n) and not _is_submodule(module_name(path), n)]
    assert not missing, f"{path.relative_to(REPO)}: __all__ names what it does not define: {missing}"


def _is_submodule(package: str, name: str) -> bool:
    try:
        importlib.import_module(f"{package}.{name}")
    except ModuleNotFoundError:
        return False
    return True


def imported_names(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, module, name) of each `from PROJECT_MODULE import name` in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    yield node.lineno, node.module, alias.name


def test_tests_and_scripts_use_only_exported_names() -> None:
    """A name a module does not list in `__all__` is its own business: tests and benchmarks that import
    it would pin an internal detail, and a refactor would break them for no user-visible reason."""
    wrong = []
    for path in [*project_files("tests", "scripts")]:
        for line, module, name in imported_names(path):
            file = REPO / (module.replace(".", "/") + ".py")
            exported = declared_all(file if file.exists() else REPO / module.replace(".", "/") / "__init__.py")
            if exported is None or name not in exported:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {module}.{name}")
    assert not wrong, "imports of names not in __all__:\n" + "\n".join(wrong)


def test_recipes_top_level_holds_the_entry_points() -> None:
    top = {p.stem for p in (REPO / "recipes").glob("*.py")}
    assert top <= ENTRY_POINTS | {"__init__", "errors"}, sorted(top - ENTRY_POINTS)
    assert len(top) <= 8


@pytest.mark.parametrize("root", PACKAGES)
def test_no_module_is_over_300_lines(root: str) -> None:
    long = {
        str(p.relative_to(REPO)): n for p in project_files(root) if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by job: {long}"


# A repository path in a code span or link: recipes/..., conf/..., scripts/..., docs/... with a suffix.
_PATH = re.compile(
    r"(?<![\w./-])((?:recipes|callbacks|modules|conf|scripts|tests|docs|hydra_plugins)/[\w./-]*\w\.(?:py|yaml|md|sh|png))"
)


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_every_path_the_docs_name_exists(doc: str) -> None:
    path = REPO / doc if doc == "README.md" else REPO / "docs" / doc
    named = {p for p in _PATH.findall(path.read_text()) if "NAME" not in p}  # conf/recipe/NAME.yaml: a pattern
    missing = sorted(p for p in named if not (REPO / p).exists() and not (REPO / "docs" / p).exists())
    assert not missing, f"{doc} names files that do not exist: {missing}"
