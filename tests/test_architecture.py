"""The house: satlib's modules import only downward, never inside functions, stay small, and no module branches on
a preset's name. ARCHITECTURE.md draws the same layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "satlib"
#: The layers, lowest first; inside a layer, a module may import the ones listed before it.
LAYERS: dict[str, list[str]] = {
    "ground": ["errors", "storage", "config", "network", "specs", "presets"],
    "methods": ["verdicts", "claims", "metrics", "optimize", "scaling", "theory", "ngram", "bottleneck", "synthetic",
                "spectra", "anisotropy", "saturation", "controlled_verdicts", "gradient_bottleneck", "book",
                "heads.lowrank",
                "heads.mixture"],
    "sources": ["data", "corpus", "tokenization", "models"],
    "training": ["training"],
    "measurement": ["evaluate", "sweep", "heads.features"],
    "experiments": ["heads.experiments", "long_run", "shapes", "dimensionality", "controlled",
                    "gradient_runs"],
    "interface": ["heads", "build.execution", "build.parameters", "build.record", "build.ledger", "build", "cli",
                  "__main__", ""],
}  # fmt: skip
RANK = {name: index for index, name in enumerate(m for layer in LAYERS.values() for m in layer)}
#: Imports inside functions that an optional dependency demands (module: imported names).
OPTIONAL_IMPORTS = {"book": {"myst_nb"}, "data": {"datasets"}, "build.execution": {"psutil"}}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in relative.parts if p != "__init__"]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def satlib_imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported satlib module, inside a function) for every import of satlib in a module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "satlib":
                target = child.module.removeprefix("satlib").lstrip(".")
                names = [a.name for a in child.names]
                for name in names:  # `from satlib import heads` imports the module satlib.heads
                    candidate = f"{target}.{name}".lstrip(".")
                    found.append((candidate if candidate in MODULES else target, inside))
            elif isinstance(child, ast.Import):
                found.extend((a.name.removeprefix("satlib").lstrip("."), inside) for a in child.names
                             if a.name.split(".")[0] == "satlib")  # fmt: skip
            visit(child, inside)

    visit(tree, False)
    return found


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(RANK), f"modules without a layer: {sorted(set(MODULES) - set(RANK))}"


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n or "satlib")
def test_imports_go_only_downward_and_never_inside_functions(name):
    tree = ast.parse(MODULES[name].read_text())
    for target, inside in satlib_imports(tree):
        assert not inside, f"satlib.{name} imports satlib.{target} inside a function"
        assert RANK[target] < RANK[name], (
            f"satlib.{name} (rank {RANK[name]}) imports satlib.{target} (rank {RANK[target]})"
        )


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n or "satlib")
def test_no_import_inside_a_function_but_optional_dependencies(name):
    tree = ast.parse(MODULES[name].read_text())
    allowed = OPTIONAL_IMPORTS.get(name, set())
    for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]:
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert all(m.split(".")[0] in allowed for m in modules), (
                    f"satlib.{name}: {modules} imported in a function"
                )


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n or "satlib")
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= 400, f"satlib.{name} has {lines} lines: split it by concept"


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"presets"}), ids=lambda n: n or "satlib")
def test_no_module_compares_a_presets_name(name):
    source = MODULES[name].read_text()
    assert not re.search(r"""(==|!=|\bin\b)\s*\(?["'](tiny|pythia)["']""", source), f"satlib.{name} branches on a name"


def test_architecture_md_lists_every_layer_and_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for layer, modules in LAYERS.items():
        assert layer in text, layer
        for module in modules:
            if module and module in MODULES:
                assert f"`{module}`" in text or f"`satlib.{module}`" in text, f"ARCHITECTURE.md does not name {module}"
