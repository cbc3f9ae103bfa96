"""What the chapters share: the glue shim, the figure style, and provenance labels.

* :func:`glue` stores a computed number for the prose (``{glue:text}`name``` in MyST). It uses myst-nb's
  glue when myst-nb is installed (the book build) and otherwise just shows the value (Colab), so the same
  notebook runs in both places.
* :func:`use_style` sets one matplotlib style for every figure of the book.
* :class:`Source` labels where a number comes from. Every curve in a figure carries one of these labels, so
  a reader never mistakes a value read off the paper's figure for one this book computed.
* :func:`colab_install_cell` is the first cell of every chapter: on Colab it installs
  :func:`install_requirement`, this version of satlib from the book's repository (a pinned tag).
"""

from __future__ import annotations

import ast
import json
from enum import Enum
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd

from satlib.claims import CLAIMS
from satlib.config import REPOSITORY_URL, VERSION
from satlib.verdicts import records_json

#: Colours of the book's figures, in the order series are drawn (colour-blind safe, Okabe & Ito 2008).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


class Source(Enum):
    """Provenance of a number shown in the book."""

    LIVE = "computed by this book"
    PAPER_EXACT = "paper (exact)"
    PAPER_DIGITISED = "paper (digitised from figure, approximate)"
    EXTERNAL = "external data"

    def label(self, what: str) -> str:
        """Legend label: ``what`` followed by the provenance, e.g. ``"Pythia-70M — paper (exact)"``."""
        return f"{what} — {self.value}"

    @property
    def style(self) -> dict[str, Any]:
        """Matplotlib keyword arguments that make the provenance visible at a glance."""
        return {
            Source.LIVE: {"linestyle": "-", "marker": "o", "markersize": 4},
            Source.PAPER_EXACT: {"linestyle": "--", "marker": "s", "markersize": 4},
            Source.PAPER_DIGITISED: {"linestyle": ":", "marker": "x", "markersize": 5},
            Source.EXTERNAL: {"linestyle": "-.", "marker": "^", "markersize": 4},
        }[self]


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the book's prose.

    With myst-nb present this is ``myst_nb.glue``; without it (plain Jupyter, Colab) nothing is recorded and
    the value is printed when ``display`` is true, so notebooks run unchanged everywhere. NumPy scalars are
    stored as Python numbers, so that the prose's format specifications (``:.2f``) apply to them.
    """
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    try:
        from myst_nb import glue as myst_glue  # optional dependency: the book build's (absent on Colab)
    except ImportError:
        if display:
            print(f"{name} = {value}")
        return
    myst_glue(name, value, display=display)


def use_style() -> None:
    """Apply the book's figure style (sizes, fonts, grid, colour cycle) to matplotlib."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.8, 4.0),  # at most 6.8 in: shown at full size in the page column (issue 18)
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "figure.constrained_layout.use": True,
            "font.size": 10.5,
            "axes.titlesize": 11,
            "axes.labelsize": 10.5,
            "legend.fontsize": 8.5,
            "legend.frameon": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
            "lines.linewidth": 1.6,
        }
    )


def legend_below(fig: Any, *handles_labels: Any, ncols: int = 2, **kwargs: Any) -> Any:
    """The figure's legend under its axes, in at most ``ncols`` columns: fewer when the legend would be wider than
    the figure, which would widen the saved image and shrink every figure's text on the page (issue 18).

    Args:
        fig: a matplotlib figure with constrained layout (the book's style).
        handles_labels: optional ``(handles, labels)``, as :meth:`matplotlib.figure.Figure.legend` takes them.
        ncols: the most columns; kwargs go to ``fig.legend`` (``fontsize``, ``title``...).
    """
    for columns in range(ncols, 0, -1):
        legend = fig.legend(*handles_labels, loc="outside lower center", ncols=columns, **kwargs)
        if columns == 1 or legend.get_window_extent().width <= fig.bbox.width:
            return legend
        legend.remove()
    raise ValueError(f"ncols must be at least 1, got {ncols}")


def glued_values(executed_notebook: Any) -> dict[str, Any]:
    """The values a notebook glued, keyed by glue name.

    Each value is parsed back from its ``text/plain`` form when that is a Python literal (numbers, strings,
    booleans), and left as text otherwise.

    Args:
        executed_notebook: path to an executed ``.ipynb`` (or its parsed JSON as a dict).
    """
    notebook = executed_notebook
    if not isinstance(notebook, dict):
        notebook = json.loads(Path(executed_notebook).read_text())
    values: dict[str, Any] = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("scrapbook", {})
            if "name" not in record:
                continue
            text = output.get("data", {}).get(record.get("mime_prefix", "") + "text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            try:
                values[record["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                values[record["name"]] = text
    return values


#: How the book writes model names in legends and tables.
DISPLAY_NAMES = {"smollm2-135m": "SmolLM2-135M"}


def display_name(model: str) -> str:
    """The book's spelling of a model name: ``SmolLM2-135M``, ``Pythia-70M``; the suite's own names unchanged."""
    if model in DISPLAY_NAMES:
        return DISPLAY_NAMES[model]
    if model.startswith("pythia-"):
        return "Pythia-" + model.removeprefix("pythia-").upper()
    return model


def table(
    frame: Any, formats: dict[str, str] | str | None = None, empty: str = "—", name: str = "table", index: bool = True
) -> Any:
    """A table formatted for reading: chosen formats per column (``"{:.3f}"``), ``empty`` where a value is missing
    (say what the empty cell means), a fixed HTML id (the same page on every build), the index shown or hidden."""
    styler = frame.style.set_uuid(name).format(formats, na_rep=empty)
    return styler if index else styler.hide(axis="index")


def claims_table(claims: list[Any]) -> Any:
    """The ledger rows of a chapter (:class:`satlib.claims.Claim` records) as a table: claim, verdict, the paper's
    and the book's values."""
    rows = [{"claim": c.id, "verdict": c.verdict, "paper": c.paper_value, "this book": c.book_value} for c in claims]
    return table(pd.DataFrame(rows), name="claims", index=False).set_properties(**{"text-align": "left"})


def status_line(claims: list[Any]) -> str:
    """One line for a chapter's header: each verdict of its claims, with how many claims have it."""
    counts: dict[str, int] = {}
    for claim in claims:
        verdict = claim.verdict.split(":")[0] if claim.verdict.startswith("tested beyond") else claim.verdict
        counts[verdict] = counts.get(verdict, 0) + 1
    return "; ".join(f"{verdict} ({count})" for verdict, count in counts.items())


def glue_claims(claims: list[Any]) -> None:
    """Glue a chapter's ledger records for the build (``claims``, JSON) and its one-line status (``status``)."""
    glue("claims", records_json(claims))
    glue("status", status_line(claims))


class Markdown(str):
    """Text that Jupyter shows as Markdown (through ``_repr_markdown_``, without importing IPython)."""

    def _repr_markdown_(self) -> str:
        return str(self)


def criteria(chapter: str) -> Markdown:
    """The claims a chapter judges, each with the criterion fixed for it before any result (:data:`CLAIMS`), as a
    list to show at the top of the chapter."""
    lines = [f"- **{spec.id}**{' (beyond the paper)' if spec.beyond_paper else ''}: {spec.claim} "
             f"*Paper:* {spec.paper_value}. *Criterion:* {spec.criterion}"
             for spec in CLAIMS.values() if spec.chapter == chapter]  # fmt: skip
    return Markdown("\n".join(lines))


def install_requirement() -> str:
    """The pip requirement that installs this version of satlib from the book's repository.

    It names the tag ``v<satlib version>`` (created by the publishing workflow, .github/workflows/book.yml), never
    the moving main branch, so that a chapter opened on Colab runs the library it was written for.
    """
    return f"satlib @ git+{REPOSITORY_URL}@v{VERSION}"


def colab_install_cell() -> str:
    """The exact source of the first code cell of every chapter (tagged ``remove-cell``, so the book does not show
    it). On Colab it pip-installs :func:`install_requirement`; anywhere else it does nothing."""
    return (
        "# On Google Colab only: install the version of satlib this notebook was written for "
        "(elsewhere this cell does nothing).\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        f'    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "{install_requirement()}"])'
    )
