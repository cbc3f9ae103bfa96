"""The executed notebooks and the built HTML book (run after `make book`)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

from satlib.book import glued_values
from satlib.config import REPOSITORY_URL

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "book" / "notebooks"
HTML = ROOT / "_build" / "html"
SOURCES = sorted((ROOT / "notebooks").glob("*.ipynb"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]


def executed(name: str) -> dict:
    path = EXECUTED / f"{name}.ipynb"
    assert path.is_file(), f"{path} missing: run `make book` first"
    return json.loads(path.read_text())


def page(docname: str) -> BeautifulSoup:
    path = HTML / f"{docname}.html"
    assert path.is_file(), f"{path} missing: run `make book` first"
    return BeautifulSoup(path.read_text(), "html.parser")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_executed_without_errors_and_every_figure_drawn(source):
    notebook = executed(source.stem)
    for index, cell in enumerate(notebook["cells"], 1):
        outputs = cell.get("outputs", [])
        assert not [o for o in outputs if o["output_type"] == "error"], f"{source.stem} cell {index} failed"
        stderr = "".join("".join(o.get("text", "")) for o in outputs if o.get("name") == "stderr")
        assert "Warning" not in stderr, f"{source.stem} cell {index} warns: {stderr[:200]}"
        if "figure" in cell["metadata"].get("mystnb", {}):
            assert any("image/png" in o.get("data", {}) for o in outputs), f"{source.stem} cell {index}: no image"


@pytest.mark.parametrize("docname", PAGES)
def test_every_toc_page_is_built(docname):
    assert page(docname).find("main") is not None


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapter_page_has_figures_numbers_and_colab_link(source):
    soup = page(f"book/notebooks/{source.stem}")
    n_figures = sum("figure" in c["metadata"].get("mystnb", {}) for c in executed(source.stem)["cells"])
    figures = soup.select("figure")
    assert len(figures) == n_figures
    for figure in figures:
        assert figure.find("img") is not None and figure.find("img").get("src")
        assert figure.select_one(".caption-number").get_text(strip=True).startswith("Figure")
    colab = f"https://colab.research.google.com/github/{REPOSITORY_URL.removeprefix('https://github.com/')}"
    links = {a.get("href") for a in soup.find_all("a")}
    assert f"{colab}/blob/main/notebooks/{source.stem}.ipynb" in links
    assert not any(link and "/book/notebooks/" in link and "github" in link for link in links)
    assert soup.select(".pasted-text"), "no glued number made it into the prose"


@pytest.mark.parametrize("docname", PAGES)
def test_no_error_output_anywhere(docname):
    soup = page(docname)
    assert not soup.select(".output.traceback, .output.error, .ansi-red-intense-fg")
    text = soup.get_text()
    for marker in ("Traceback (most recent call last)", "Error:", "Warning:", "NOT attained", "FAILS"):
        assert marker not in text, f"{docname}: page shows {marker!r}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_every_glued_name_in_prose_was_computed(source):
    prose = "".join("".join(c["source"]) for c in executed(source.stem)["cells"] if c["cell_type"] == "markdown")
    used = set(re.findall(r"\{glue:(?:text|any|md)\}`([A-Za-z0-9_]+)", prose))
    missing = used - set(glued_values(EXECUTED / f"{source.stem}.ipynb"))
    assert not missing, f"{source.stem}: prose uses names never glued: {sorted(missing)}"


def test_bibliography_lists_the_paper():
    text = page("book/bibliography").get_text()
    assert "Godey" in text and "softmax bottleneck" in text


def bibliography_labels() -> dict[str, str]:
    """The bibliography's labels ("Godey et al., 2024b") by entry id."""
    entries = page("book/bibliography").select("div.citation")
    return {e["id"]: " ".join(e.select_one(".label").get_text().split()).strip("[]") for e in entries}


def test_bibliography_labels_are_author_year_with_letters_only_where_needed():
    """Issue 18: labels in the citations' author-year form; one author's works of one year get 2024a, 2024b."""
    labels = bibliography_labels()
    assert labels and len(set(labels.values())) == len(labels), labels
    parts = {key: re.fullmatch(r"(.+), (\d{4}|n\.d\.)([a-z]?)", label) for key, label in labels.items()}
    assert all(parts.values()), [label for key, label in labels.items() if not parts[key]]
    shared = Counter((m[1], m[2]) for m in parts.values())
    for key, match in parts.items():
        needs_letter = shared[(match[1], match[2])] > 1
        assert bool(match[3]) == needs_letter, f"{labels[key]}: a letter is needed exactly where author and year repeat"
    assert {"Godey et al., 2024a", "Godey et al., 2024b"} <= set(labels.values())


@pytest.mark.parametrize("docname", PAGES)
def test_citations_name_their_entry_as_the_bibliography_labels_it(docname):
    """A citation reads "[Godey et al., 2024b]" or "Godey et al. [2024b]", exactly the label of the entry it links."""
    labels = bibliography_labels()
    for link in page(docname).select('a.reference.internal[href*="bibliography.html#"]'):
        label = labels[link["href"].rsplit("#", 1)[1]]
        text = " ".join(link.get_text().split())
        if text != label:  # a textual citation links its year only, after the authors
            assert text == label.rsplit(", ", 1)[1], f"{docname}: citation {text!r} of the entry labelled {label!r}"
            before = " ".join(link.find_parent(class_="bibtex-citation").get_text().split())
            assert before.startswith(label.rsplit(", ", 1)[0]), f"{docname}: {before!r} cites {label!r}"


def test_theory_chapter_numbers():
    values = glued_values(EXECUTED / "06_theory.ipynb")
    assert values["theory_status"] == "reproduced"
    assert values["werr_321_d1"] == pytest.approx(0.597614, abs=1e-6)
    assert values["werr_321_d2"] == pytest.approx(0.267261, abs=1e-6)
    assert values["target_rank"] == 256
    assert values["kl_d1"] > values["kl_d16"] > values["kl_d64"]
    assert values["max_eym_gap"] < 1e-10
    assert values["looseness_small_d"] > 10 and values["looseness_large_d"] > 10
    assert values["gap_d8"] < values["bound_d8"]


def test_saturation_chapter_numbers():
    """Section 3 against the paper: A = 119.09, alpha = 0.246, 8% and about 4% (paper §3, exact)."""
    values = glued_values(EXECUTED / "01_saturation.ipynb")
    assert values["closer_fit"] == "least squares"
    assert values["ls_A"] == pytest.approx(119.09, rel=0.02)
    assert values["ls_alpha"] == pytest.approx(0.246, abs=0.003)
    assert values["ls_final_gap"] == pytest.approx(8.0, abs=1.0)
    assert values["ls_best_gap"] == pytest.approx(4.0, abs=1.0)
    assert values["huber_A"] < values["ls_A"]
    assert values["saturating_models"] == "pythia-70m, pythia-160m"
    assert values["table1_same_direction"] == values["table1_rows"] == 4
    assert values["saturation_status"] == "reproduced"


def test_saturation_chapter_live_suite():
    """The book's own suite: trained, evaluated, and honestly not saturating this early."""
    values = glued_values(EXECUTED / "01_saturation.ipynb")
    assert values["live_final_first"] > values["live_final_last"]  # wider models reach lower loss
    assert values["live_final_last"] < 6.0  # far below the untrained log(4096) = 8.3 nats
    assert values["live_tpp_max"] < values["pythia14m_best_tpp"] / 100
    assert values["live_rising"] == "none of them" or values["live_max_rise"] > 0.01


def test_anisotropy_chapter_numbers():
    """The warm-up frequency phase is found, measured and not mistaken for saturation."""
    values = glued_values(EXECUTED / "02_anisotropy.ipynb")
    assert values["peak_anisotropy_min"] > 0.8  # every model passes through near-collinear representations
    assert values["unigram_loss"] < values["peak_loss_min"] <= values["peak_loss_max"] < values["uniform_loss"]
    assert values["late_max"] < values["peak_anisotropy_min"]
    assert 1 <= values["jump_step_min"] <= values["jump_step_max"] <= 120  # the jump is in the first tenth
    assert 0 <= values["final_last_layer_min"] <= values["final_last_layer_max"] < 1
    assert -0.01 < values["smollm2_last_layer"] < 1
    assert values["anisotropy_status"].startswith(("reproduced", "not reproduced at this scale"))


def test_singular_values_chapter_numbers():
    values = glued_values(EXECUTED / "03_singular_values.ipynb")
    assert values["median_initial_min"] > 0.5 > values["median_final_max"]  # training steepens the spectrum
    assert values["entropy1_final_max"] < values["entropy2_final_min"]  # sigma^2 weighs the top more
    assert values["closer_power"] == "sigma"
    assert 1 < values["smollm2_effective_rank"] <= 576
    assert 0 <= values["alignment_final_min"] <= values["alignment_final_max"] <= 1
    assert values["spectrum_status"].startswith(("reproduced", "not reproduced at this scale"))


def test_rank_constrained_heads_chapter_numbers():
    """Figures 6, 8, 9 at small scale: loss falls with rank, rates shrink with rank, onset measured on both sides."""
    values = glued_values(EXECUTED / "04_rank_constrained_heads.ipynb")
    assert values["suite_loss_min_rank"] > values["suite_loss_full"]
    reaches = values["suite_loss_full"] <= values["suite_own_loss"]
    assert values["own_head_phrase"] == ("matches or beats" if reaches else "does not reach")
    transfers = abs(values["onset_suite_w"] - values["onset_paper_w"]) < 0.1
    assert values["threshold_verdict"] == ("transfers" if transfers else "does not transfer")
    assert 0 <= values["n_at_edge"] <= values["n_chosen"]
    assert values["suite_relative_quarter"] >= values["suite_relative_half"] >= 0.99
    assert values["onset_paper_rank"] == 1024 and values["onset_paper_w"] == pytest.approx(0.56)
    assert 0 <= values["onset_suite_w"] <= values["suite_max_w"] <= 1
    assert values["smol_truncated"] > values["smol_full"] and values["smol_trained"] > values["smol_full"]
    opposite = values["smol_truncated"] > values["smol_trained"]
    assert values["smol_comparison"].startswith("the opposite holds" if opposite else "the same holds")
    assert values["token_ratio"] > 1
    assert values["heads_status"] in ("reproduced", "partly reproduced", "not reproduced at this scale")


def test_ngram_chapter_numbers():
    """Figure 7 on the corpus: the dimension needed is bounded by C and grows with it."""
    values = glued_values(EXECUTED / "05_ngram_dimensionality.ipynb")
    for tokenizer in ("bpe_4096", "bpe_8192", "smollm2_135m"):
        assert 0 < values[f"d05_{tokenizer}"] < values[f"d01_{tokenizer}"] <= values["n_contexts"]
    assert values["smol_d01_first"] < values["smol_d01_last"] <= values["c_last"]
    assert 0 < values["slope_min"] <= values["slope_max"] <= 1.05  # rank bound: d <= C
    assert 0 < values["singletons_min"] <= values["singletons_max"] < 100
    assert values["contexts_4096"] > values["n_contexts"]
    assert values["d01_min"] == min(values[f"d01_{t}"] for t in ("bpe_4096", "bpe_8192", "smollm2_135m"))
    assert values["ngram_status"] in ("partly reproduced", "not reproduced at this scale")


def test_discussion_chapter_numbers():
    """Issue 7: the heads' ranks obey the bound, the verdicts follow from the glued losses, later work is cited."""
    values = glued_values(EXECUTED / "07_discussion.ipynb")
    assert values["rank_linear"] == values["suite_d"] + 1  # the softmax bottleneck, measured
    assert values["smol_rank_linear"] == values["smol_d"] + 1 and values["rank_contexts"] == 2 * (values["suite_d"] + 1)
    broken = values["rank_equal"] > values["rank_linear"]
    assert values["rank_headline"].endswith("the mixture breaks it.") == broken
    assert values["rank_phrase"] == ("breaks" if broken else "does not break")
    helps_suite = min(values["loss_equal"], values["loss_matched"]) < values["loss_linear"] - 0.01
    assert values["suite_mos_verdict"] == ("beats" if helps_suite else "does not beat")
    helps_smol = values["smol_mos"] < values["smol_linear"] - 0.01
    assert values["smol_mos_verdict"] == ("improves on" if helps_smol else "does not improve on")
    assert values["smol_gain"] == pytest.approx(values["smol_linear"] - values["smol_mos"])
    assert values["cost_equal"] > 1 and values["smol_cost"] > 1 and values["params_equal"] > 1
    assert 0 <= values["suite_edge"] <= values["suite_heads"] == 4 and values["smol_heads"] == 2
    assert values["wide_params"] == pytest.approx(values["deep_params"], rel=0.02)  # one budget
    assert values["loss_winner"] == ("The wider" if values["wide_loss"] < values["deep_loss"] else "The deeper")
    helped = [name for name, flag in (("tiny-d128 from scratch", helps_suite),
                                      ("smollm2-135m fine-tuned from its own head", helps_smol)) if flag]  # fmt: skip
    mos = f"MoS helps on {' and '.join(helped)}" if helped else "MoS helps in neither comparison"
    expected = f"tested beyond the paper: {mos}; {values['shapes_saturated']} of 2 shapes saturate"
    assert values["discussion_status"] == expected
    text = page("book/notebooks/07_discussion").get_text().replace("\u2019", "'")  # Sphinx's smart quotes
    assert "Other people's work, not this book's results" in text
    for reference in ("Diehl\xa0Martinez", "Fehlauer", "Kanai"):  # citations resolve (names joined by a no-break space)
        assert reference in text


def test_long_run_snapshot_is_drawn_with_a_computed_verdict():
    """Issue 10: the frozen long run, far beyond the tiny suite, with its verdict computed from the snapshot."""
    saturation_values = glued_values(EXECUTED / "01_saturation.ipynb")
    assert saturation_values["long_tpp_max"] > 10 * saturation_values["live_tpp_max"]
    assert 0 <= saturation_values["long_at_last"] <= saturation_values["long_n_runs"] >= 2
    assert saturation_values["long_tpp_share"] < 1  # still short of Pythia-14M's best
    assert saturation_values["long_hours_to_pythia"] > 1
    spectrum_values = glued_values(EXECUTED / "03_singular_values.ipynb")
    assert spectrum_values["long_anisotropy_peak_min"] > 0.8  # the warm-up frequency phase, again
    assert 0 <= spectrum_values["long_anisotropy_final_max"] < spectrum_values["long_anisotropy_peak_min"]
    text = page("book/notebooks/01_saturation").get_text()
    assert "python -m satlib.saturation run" in text and "snapshot provenance" in text


def test_intro_status_table_is_computed_from_the_chapters():
    """Issue 9: the intro's status column is each chapter's own glued status, not typed."""
    keys = {"01_saturation": "saturation_status", "02_anisotropy": "anisotropy_status",
            "03_singular_values": "spectrum_status", "04_rank_constrained_heads": "heads_status",
            "05_ngram_dimensionality": "ngram_status", "06_theory": "theory_status",
            "07_discussion": "discussion_status"}  # fmt: skip
    rows = page("book/intro").find("table").find_all("tr")[1:]
    assert len(rows) == len(keys)
    for row, (chapter, key) in zip(rows, keys.items(), strict=True):
        cells = row.find_all("td")
        assert chapter in cells[0].find("a")["href"]
        assert cells[2].get_text(strip=True) == glued_values(EXECUTED / f"{chapter}.ipynb")[key]


def test_every_chapter_has_exercises_with_hidden_solutions():
    """Issue 9: two or more exercises per chapter; solutions behind a toggle, executed by the build."""
    for source in SOURCES:
        soup = page(f"book/notebooks/{source.stem}")
        exercises = soup.select("div.exercise")
        solutions = soup.select("div.solution")
        assert 2 <= len(exercises) <= 4, f"{source.stem}: {len(exercises)} exercises"
        assert len(solutions) == len(exercises)
        assert all("dropdown" in s.get("class", []) for s in solutions), f"{source.stem}: solutions not hidden"
    assert "What each exercise teaches" in page("book/instructors").get_text()
