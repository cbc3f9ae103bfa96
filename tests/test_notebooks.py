"""Hygiene of the source notebooks: the conventions every chapter follows."""

from __future__ import annotations

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
def test_colab_install_cell_then_parameters(path):
    first, second = cells(path)[:2]
    assert first["metadata"].get("tags") == ["remove-cell"]
    assert '"google.colab" in sys.modules' in source(first) and REPOSITORY_URL in source(first)
    assert "parameters" in second["metadata"].get("tags", [])
    assert re.search(r'^PRESET = "tiny"', source(second), re.MULTILINE)
    assert "SEED" in source(second)


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
        if not f.startswith("book/notebooks/"):
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
