"""The notebook executor: failures are reported with notebook and cell; every notebook is attempted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from satlib import build


def write_notebook(path: Path, sources: list[str]) -> Path:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": s, "id": f"c{i}"}
        for i, s in enumerate(sources)
    ]
    cells[0]["metadata"]["tags"] = ["parameters"]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))
    return path


def test_failing_cell_is_numbered_as_in_source():
    executed = {
        "cells": [
            {"metadata": {"tags": ["papermill-error-cell-tag"]}, "source": "banner", "outputs": []},
            {"metadata": {"tags": ["parameters"]}, "source": "PRESET = 'tiny'", "outputs": []},
            {"metadata": {"tags": ["injected-parameters"]}, "source": "PRESET = 'tiny'", "outputs": []},
            {"metadata": {}, "source": ["x = 1\n", "raise ValueError('boom')"],
             "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "boom", "traceback": []}]},
        ]
    }  # fmt: skip
    assert build.failing_cell(executed) == "cell 2 ('x = 1'): ValueError: boom"
    assert build.failing_cell({"cells": []}) is None


@pytest.mark.slow
def test_execute_reports_broken_notebook_and_runs_the_others(tmp_path, capsys):
    broken = write_notebook(tmp_path / "a_broken.ipynb", ["PRESET = 'tiny'", "x = 1", "1 / 0"])
    fine = write_notebook(tmp_path / "b_fine.ipynb", ["PRESET = 'tiny'", "y = 2"])
    out = tmp_path / "out"
    status = build.main(["execute", str(broken), str(fine), "--out", str(out), "--logs", str(tmp_path / "logs")])
    printed = capsys.readouterr().out
    assert status == 1
    assert f"FAILED {broken}: cell 3 ('1 / 0'): ZeroDivisionError: division by zero" in printed
    assert "Executed 2 notebooks, 1 failed." in printed
    assert (out / "b_fine.ipynb").is_file()


@pytest.mark.slow
def test_execute_kills_a_notebook_past_its_timeout(tmp_path):
    slow = write_notebook(tmp_path / "slow.ipynb", ["PRESET = 'tiny'", "import time\ntime.sleep(120)"])
    result = build.execute_notebook(slow, tmp_path / "out.ipynb", {}, timeout=15, log_dir=tmp_path)
    assert result.error is not None and result.error.startswith("timed out after 15 s")
    assert result.seconds < 60


def test_bad_parameters_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="parameter file"):
        build.load_parameters(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        build.load_parameters(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("PRESET: huge\n")
    with pytest.raises(ValueError, match="unknown preset"):
        build.execute_notebook(tmp_path / "x.ipynb", tmp_path / "y.ipynb", build.load_parameters(unknown), 5, tmp_path)


def test_heavy_chapters_start_first():
    names = [Path(f"notebooks/{stem}.ipynb") for stem in ("01_a", "07_discussion", "02_b", "04_rank_constrained_heads")]
    ordered = [path.stem for path in sorted(names, key=build.execution_order)]
    assert ordered == ["04_rank_constrained_heads", "07_discussion", "01_a", "02_b"]
