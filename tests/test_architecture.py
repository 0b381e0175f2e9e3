"""The house's floors: scorer < broker < viewer < rallycast. A package may import its own
floor and the floors below it, never one above (README, "What is where"). Every import counts:
at module level, inside functions, under ``if TYPE_CHECKING``, ``importlib.import_module("x")``
with a literal name, and the module names a subcommand table lists as strings.

Parsed with the standard library's ``ast``, so the check needs no dependency and runs in CI
with the rest of the suite (``./dev test``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Lowest first. Tests and tools above all of them may import anything.
LAYERS = ("scorer", "broker", "viewer", "rallycast")


def _modules(package: str) -> list[Path]:
    root = REPO / package
    return sorted(p for p in root.rglob("*.py") if "node_modules" not in p.parts)


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _dotted_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that name one of our modules (e.g. the CLI's SUBCOMMANDS table,
    ``[sys.executable, "-m", "broker.cli"]``): a lazy import is still an arrow. Logger names
    (``getLogger("rallycast.up")``) are names, not imports."""
    loggers = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) == "getLogger"
        for arg in node.args
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in loggers
        ):
            head, dot, _rest = node.value.partition(".")
            if dot and head in LAYERS and _is_module(node.value):
                found.append((node.lineno, node.value))
    return found


def imported_names(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module name) of every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found + _dotted_strings(tree)


def upward_arrows(package: str) -> list[str]:
    """``file:line imports name`` for each import from ``package`` of a higher floor."""
    higher = LAYERS[LAYERS.index(package) + 1 :]
    arrows = []
    for path in _modules(package):
        for line, name in imported_names(path):
            if name.split(".")[0] in higher:
                arrows.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return arrows


@pytest.mark.parametrize("package", LAYERS[:-1])
def test_no_package_imports_a_higher_floor(package):
    assert upward_arrows(package) == [], (
        f"{package}/ may import only {', '.join(LAYERS[: LAYERS.index(package) + 1])}: "
        "move the shared piece down, or the caller up into rallycast/"
    )


def test_the_checker_sees_imports_inside_functions(tmp_path):
    # The checker itself: a lazy import inside a function, and a module named in a string.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import logging\n"
        "def f():\n    from viewer.server import start_viewer\n"
        "TABLE = {'replay': ('scorer.replay', 'help')}\n"
        "log = logging.getLogger('viewer.server')\n"
    )
    names = [name for _line, name in imported_names(sample)]
    assert names == ["logging", "viewer.server", "scorer.replay"]


def test_every_floor_exists():
    for package in LAYERS:
        assert (REPO / package / "__init__.py").is_file(), f"{package}/ is not a package"
