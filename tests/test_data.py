"""satlib.data: the paper's values and Pythia's evaluations (read, verified, downloaded when missing)."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from satlib import config, data

EVALS = config.data_dir() / "pythia-evals"
needs_evals = pytest.mark.skipif(not EVALS.is_dir(), reason="Pythia evaluations not in the data directory")


def test_paper_values_and_provenance():
    table = data.paper_values("table1_pythia160m_best_vs_final")
    assert list(table.checkpoint) == ["best", "final"]
    assert table.set_index("checkpoint").loc["best", "lambada_ppl"] == 24.6
    assert "Transcribed exactly" in data.paper_provenance("table1_pythia160m_best_vs_final")
    assert "DIGITISED" in data.paper_provenance("fig1b_checkpoints")
    with pytest.raises(ValueError, match="no paper table 'fig99'"):
        data.paper_values("fig99")


@needs_evals
def test_pythia_evaluations_tidy_table():
    table = data.pythia_evaluations()
    assert table.groupby(["model", "deduped", "variant", "run", "shots", "step"]).ngroups == 876
    assert (table.tokens == table.step * 2_097_152).all()
    row = table.query("model == 'pythia-160m' and not deduped and shots == 0 and step == 143000 and variant == ''")
    raw = json.loads((EVALS / "pythia-v1/pythia-160m/zero-shot/160m_step143000.json").read_text())["results"]
    lambada = row[(row.task == "lambada_openai") & (row.metric == "ppl")]
    assert lambada.value.item() == raw["lambada_openai"]["ppl"]
    assert lambada.stderr.item() == raw["lambada_openai"]["ppl_stderr"]
    assert set(table[table.model == "pythia-1b"].variant) >= {"bf16"}
    # The misnamed early zero-shot files of the 1B bf16 run are read as zero-shot, from their configuration.
    early = table.query("model == 'pythia-1b' and variant == 'bf16' and step == 128")
    assert set(early.shots) == {0}


@needs_evals
def test_evaluation_curves_are_ordered_by_size():
    curves = data.evaluation_curves(data.pythia_evaluations(), "lambada_openai", "acc")
    assert list(curves.columns)[:3] == ["pythia-70m", "pythia-160m", "pythia-410m"]
    assert curves.index.max() == 143000 and len(curves) == 27
    with pytest.raises(ValueError, match="no 0-shot results for task 'nope'"):
        data.evaluation_curves(data.pythia_evaluations(), "nope", "acc")


@needs_evals
def test_corrupted_file_is_reported(tmp_path):
    copy = tmp_path / "pythia-evals"
    shutil.copytree(EVALS, copy)
    victim = copy / "pythia-v1/pythia-70m/zero-shot/70m_step1000.json"
    victim.write_text(victim.read_text()[:-10])
    with pytest.raises(ValueError, match=r"1 Pythia evaluation files .* fail their checksum"):
        data.pythia_evals_dir(copy)


def test_missing_and_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(config.CACHE_DIR_ENV, str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="no network to download them: set SATLIB_DATA_DIR"):
        data.pythia_evals_dir(tmp_path / "empty")


@needs_evals
def test_downloads_missing_files_from_the_public_layout(tmp_path, monkeypatch):
    """A local HTTP server stands in for raw.githubusercontent.com (same folder layout)."""
    served = tmp_path / "served"
    shutil.copytree(EVALS / "pythia-v1", served / "pythia-v1")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(config.CACHE_DIR_ENV, str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        folder = data.pythia_evals_dir(tmp_path / "empty", base_url=url)
    finally:
        server.shutdown()
    assert folder == tmp_path / "cache" / "data" / "pythia-evals"
    assert len(list(folder.rglob("*.json"))) == 876
    assert not list(folder.rglob(".*"))  # no temporary files left behind
