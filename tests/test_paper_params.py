"""Issue 8: parameter files, the settings they carry, and the book run with one on a local mirror of the hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from satlib import build, config, models, network, presets
from satlib.book import glued_values

ROOT = Path(__file__).resolve().parents[1]
#: Chapters whose code differs between presets (05 and 06 run the same computations at every preset).
PRESET_DEPENDENT = ("01_saturation", "02_anisotropy", "03_singular_values", "04_rank_constrained_heads",
                    "07_discussion")  # fmt: skip


@pytest.fixture(autouse=True)
def default_settings():
    yield
    presets.setup("tiny")  # the network blocked again (a pythia setup lifts the block)
    assert network.network_blocked()


@pytest.mark.parametrize("path", sorted((ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_parameter_files_are_valid(path):
    values = build.load_parameters(path)
    assert set(values) <= {"PRESET", "SEED", "SETTINGS"} and values["SEED"] == 0
    preset = presets.setup(values["PRESET"], values["SEED"], values.get("SETTINGS"))  # unknown names would raise
    if preset.published is not None:
        assert set(preset.measured_models) <= set(preset.model_names())
        for model, step in preset.checkpoints():
            assert step in models.checkpoint_steps(model, preset), f"{path.name}: no checkpoint {model} step {step}"
        experiment = preset.head_experiments[0]
        assert experiment.model in preset.measured_models
        width = models.width_of(experiment.model, preset)
        assert {width // 4, width // 2, width} <= set(experiment.ranks)  # chapter 04 compares these


def test_paper_file_carries_the_papers_settings():
    settings = build.load_parameters(ROOT / "params" / "paper.yaml")["SETTINGS"]
    assert settings["models"][0] == "pythia-14m" and settings["models"][-1] == "pythia-12b"  # 14M to 12B
    assert settings["pile_tokens"] == 50_000 and set(presets.FIGURE_1A_STEPS) <= set(settings["steps"])


def test_settings_replace_the_pythia_defaults_and_reject_bad_names():
    preset = presets.setup("pythia", 0, {"models": ["pythia-70m"], "steps": [1000], "head_train_tokens": 4096})
    assert preset.checkpoints() == [("pythia-70m", 1000)]
    assert preset.head_experiments[0].train_tokens == 4096
    assert all(e.backbone.train_tokens == 4096 for e in preset.mixture_experiments)
    default = presets.setup("pythia", 0)
    assert default.checkpoints()[0] == (presets.FIGURE_1A_MODELS[0], presets.FIGURE_1A_STEPS[0])
    with pytest.raises(ValueError, match="unknown settings \\['model'\\]"):
        presets.setup("pythia", 0, {"model": ["pythia-70m"]})
    with pytest.raises(ValueError, match="pythia preset only"):
        presets.setup("tiny", 0, {"models": ["pythia-70m"]})
    with pytest.raises(ValueError, match="models must be a non-empty list of str"):
        presets.setup("pythia", 0, {"models": "pythia-70m"})  # a string is not a list of models
    with pytest.raises(ValueError, match="pile_tokens must be of type int"):
        presets.setup("pythia", 0, {"pile_tokens": "50k"})


def test_book_runs_with_a_parameter_file_on_a_local_mirror(tmp_path):
    """``make book PARAMS=...`` with the pythia preset: every preset-dependent chapter runs end to end on hub-like
    models saved locally (a mirror) and a local Pile stand-in. The book's offline artefacts (corpus, tokenizers,
    the suite, SmolLM2, n-gram curves) are reused read-only from the build's cache."""
    from conftest import write_pythia_mirror

    if not any((config.cache_dir() / "suite").glob("tiny-shapes-*")):
        pytest.skip("the book's offline artefacts are missing: run `make book` first")
    checkpoints = [(model, step) for model in ("pythia-14m", "pythia-70m") for step in (1000, 143000)]
    pile = write_pythia_mirror(tmp_path / "hub", checkpoints, documents=80)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("corpus", "tokenizers", "suite", "pretrained", "ngram"):  # read-only: link each entry
        (cache / name).mkdir()
        for entry in (config.cache_dir() / name).iterdir():
            if not entry.name.startswith("."):  # not lock files: each cache takes its own
                (cache / name / entry.name).symlink_to(entry)
    settings = {"models": ["pythia-14m", "pythia-70m"], "steps": [1000, 143000], "pile_files": str(pile),
                "pile_tokens": 1024, "pile_context": 32, "head_model": "pythia-70m", "head_ranks": [2, 4, 8, 16],
                "head_learning_rates": [0.01, 0.03], "head_train_tokens": 2048, "head_eval_tokens": 1024}  # fmt: skip
    parameters = tmp_path / "mirror.yaml"
    parameters.write_text(yaml.safe_dump({"PRESET": "pythia", "SEED": 0, "SETTINGS": settings}))
    notebooks = [str(ROOT / "notebooks" / f"{chapter}.ipynb") for chapter in PRESET_DEPENDENT]
    environment = dict(os.environ, SATLIB_HUB_MIRROR=str(tmp_path / "hub"), SATLIB_CACHE_DIR=str(cache))
    result = subprocess.run(
        [sys.executable, "-m", "satlib", "execute", *notebooks, "--parameters", str(parameters),
         "--out", str(tmp_path / "out"), "--logs", str(tmp_path / "logs"), "--jobs", "2", "--timeout", "600"],
        cwd=ROOT, env=environment, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for chapter in PRESET_DEPENDENT:
        executed = tmp_path / "out" / f"{chapter}.ipynb"
        cells = json.loads(executed.read_text())["cells"]
        injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1 and "pythia-70m" in "".join(injected[0]["source"])
        assert glued_values(executed)["status"], f"{chapter}: no status"
    results = sorted((cache / "results" / "EleutherAI").glob("*/step*/*.json"))  # group: the hub organisation
    assert {path.parts[-3] for path in results} == {"pythia-14m", "pythia-70m"}  # measured the mirror's models
    assert [path.name for path in (cache / "heads").iterdir()] == ["pythia-70m"]  # the heads trained on head_model


def test_every_setting_is_documented():
    text = " ".join((ROOT / "book" / "reproducibility.md").read_text().split())
    assert all(f"`{name}`" in text for name in config.SETTING_NAMES)
    assert "make book PARAMS=params/paper.yaml" in text and "**not measured yet**" in text
