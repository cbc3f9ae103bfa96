"""Hygiene of the source notebooks: the conventions every chapter follows."""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from satlib.config import REPOSITORY_URL

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: One chapter per section of the paper; later issues fill them in, in this order.
CHAPTERS = {
    "01_saturation": "§3",
    "02_anisotropy": "§4.1",
    "03_singular_values": "§4.2",
    "04_rank_constrained_heads": "§5.1, Figures 6, 8, 9",
    "05_ngram_dimensionality": "§5.1, Figure 7",
    "06_theory": "§5.2",
    "07_discussion": "§6",
    "08_controlled_saturation": "beyond the paper",
    "09_gradient_bottleneck": "beyond the paper (Godey & Artzi 2026)",
}
FIGURE_CALLS = re.compile(r"plt\.(subplots|figure)\(")
GLUE_ROLE = re.compile(r"\{glue:(?:text|any|md)\}`([A-Za-z0-9_]+)")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_named_after_a_paper_section(path):
    assert path.stem in CHAPTERS, f"{path.name}: chapter files are {sorted(CHAPTERS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = json.loads(path.read_text())
    for index, cell in enumerate(notebook["cells"], 1):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {index} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {index} has an execution count"
        assert "papermill" not in cell.get("metadata", {}), f"{path.name} cell {index} carries papermill metadata"
    assert "papermill" not in notebook["metadata"], f"{path.name} carries papermill metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_then_colab_install_cell_then_parameters(path):
    chapter = cells(path)
    title, install, parameters = chapter[:3]
    assert title["cell_type"] == "markdown" and source(title).startswith("# "), f"{path.name}: the title comes first"
    assert install["metadata"].get("tags") == ["remove-cell"]
    assert '"google.colab" in sys.modules' in source(install) and REPOSITORY_URL in source(install)
    assert {"parameters", "hide-cell"} <= set(parameters["metadata"].get("tags", []))
    assert re.search(r'^PRESET = "tiny"', source(parameters), re.MULTILINE)
    assert "SEED" in source(parameters)
    code = [c for c in chapter if c["cell_type"] == "code"]
    assert code[1] is parameters, f"{path.name}: the parameters cell is the first code cell after the install cell"


def hidden(cell: dict) -> bool:
    return "remove-cell" in cell["metadata"].get("tags", [])


def assigned(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_code_never_uses_a_name_only_hidden_cells_define(path):
    chapter = [c for c in cells(path)[2:] if c["cell_type"] == "code"]  # after the title and the install cell
    visible = [ast.parse(source(c)) for c in chapter if not hidden(c)]
    defined_visibly = set().union(*(assigned(tree) for tree in visible))
    only_hidden = set().union(*(assigned(ast.parse(source(c))) for c in chapter if hidden(c))) - defined_visibly
    for tree in visible:
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        assert not used & only_hidden, f"{path.name}: visible code uses {sorted(used & only_hidden)}, defined hidden"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_hidden_cells_only_glue(path):
    for index, cell in enumerate(cells(path)[2:], 3):  # after the title and the install cell
        if cell["cell_type"] == "code" and hidden(cell):
            text = source(cell)
            assert re.search(r"\bglue(_claims)?\(", text), f"{path.name} cell {index}: a hidden cell that glues nothing"
            assert not FIGURE_CALLS.search(text) and "book.table(" not in text, f"{path.name} cell {index}: shows"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_criteria_come_first_and_the_chapter_ends_with_its_status(path):
    chapter = cells(path)
    texts = [source(c) for c in chapter]
    criteria = next(i for i, t in enumerate(texts) if f'book.criteria("{path.stem}")' in t)
    status = next(i for i, c in enumerate(chapter) if c["cell_type"] == "markdown" and "## Status" in source(c))
    claims = next(i for i, t in enumerate(texts) if "book.glue_claims(" in t)
    assert criteria < status < claims, f"{path.name}: criteria, then results, then the Status section"
    assert "book.claims_table(" in texts[status + 1], f"{path.name}: the Status section shows the claims table"
    assert not any("## Status" in t for t in texts[status + 1 :]), f"{path.name}: one Status section"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_visible_code_lines_fit_the_page(path):
    for index, cell in enumerate(cells(path), 1):
        if cell["cell_type"] == "code" and not hidden(cell):
            for line in source(cell).splitlines():
                assert len(line) <= 88, f"{path.name} cell {index}: a line of {len(line)} characters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_never_changes_the_matplotlib_backend(path):
    text = path.read_text()
    assert "MPLBACKEND" not in text and "matplotlib.use(" not in text, f"{path.name}: that silently drops figures"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_numbered_and_captioned(path):
    for index, cell in enumerate(cells(path), 1):
        if cell["cell_type"] == "code" and FIGURE_CALLS.search(source(cell)):
            figure = cell["metadata"].get("mystnb", {}).get("figure", {})
            assert figure.get("name", "").startswith("fig-"), f"{path.name} cell {index}: figure without a name"
            assert len(figure.get("caption", "")) > 40, f"{path.name} cell {index}: figure without a real caption"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_glues_computed_numbers(path):
    used = {m for c in cells(path) if c["cell_type"] == "markdown" for m in GLUE_ROLE.findall(source(c))}
    assert used, f"{path.name}: the prose glues no computed number"


def test_toc_lists_exactly_the_existing_chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    listed = sorted(Path(f).name for f in files if f.startswith("book/notebooks/"))
    assert listed == [p.stem for p in NOTEBOOKS]
    for f in files:
        if not f.startswith("book/notebooks/") and f != "book/build_info":  # build_info: generated by the build
            assert (ROOT / f"{f}.md").is_file(), f"_toc.yml lists {f}, which does not exist"


def control_characters(text: str) -> list[str]:
    """Control characters (Unicode category Cc) other than the newline, e.g. a tab left where ``\\t`` of ``\\times``
    was read as an escape."""
    return sorted({repr(c) for c in text if unicodedata.category(c) == "Cc" and c != "\n"})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_control_characters_in_prose_or_captions(path):
    found = []
    for index, cell in enumerate(cells(path), 1):
        caption = cell["metadata"].get("mystnb", {}).get("figure", {}).get("caption", "")
        prose = source(cell) if cell["cell_type"] == "markdown" else ""
        for where, text in (("caption", caption), ("markdown", prose)):
            if bad := control_characters(text):
                at = text.index(next(c for c in text if repr(c) in bad))
                found.append(f"cell {index} {where}: {', '.join(bad)} in {text[max(0, at - 30) : at + 30]!r}")
    assert not found, f"{path.name}: control characters (a backslash escape read as one?): {found}"
