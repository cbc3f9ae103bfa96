"""satlib.controlled: the controlled test of the mechanism on a synthetic language, end to end on a micro grid."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from satlib import controlled, models, training
from satlib.errors import ConfigurationError, MissingArtefactError
from satlib.specs import SuiteSpec

MICRO = controlled.ControlledGrid(
    "micro", (controlled.Student(2, "constant", 0.0, batch_size=8), controlled.Student(8, batch_size=8)),
    tokens=8 * 16 * 120, vocab_size=32, rank=4, context=16, held_out_windows=16, checkpoints=4,
)  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tmp_path


def test_a_micro_grid_end_to_end(cache):
    result = controlled.run(MICRO, snapshot=cache / "controlled-micro.json")
    assert result["provenance"]["grid"]["name"] == "micro" and result["provenance"]["machine"]
    table, provenance = controlled.load_snapshot("micro", folder=cache)
    assert provenance["wall_seconds"] >= 0
    assert set(table.student) == {s.label for s in MICRO.students}
    assert {"heldout_loss", "floor", "entropy_rate", "gap_to_floor", "singular_entropy"} <= set(table.columns)
    narrow = table[table.width == 2]
    assert (narrow.floor > narrow.entropy_rate).all()  # below the rank the floor is above the entropy rate
    wide = table[table.width == 8]  # at or above the rank: equal, up to the last bits of the float64 fit
    assert (wide.floor - wide.entropy_rate).abs().max() < 1e-12
    verdict = controlled.verdicts(table)
    assert len(verdict) == 2 and verdict["tokens per parameter"].gt(0).all()
    claim = controlled.controlled_claim(verdict, MICRO.rank, "a micro grid")
    assert claim.verdict.startswith("tested beyond the paper: ") and claim.id == "x-controlled-bottleneck"
    monkeypatch_free = controlled.measure(MICRO)  # trained once: measured from the cache
    pd.testing.assert_frame_equal(monkeypatch_free[table.columns.intersection(monkeypatch_free.columns)].reset_index(
        drop=True), table[table.columns.intersection(monkeypatch_free.columns)].reset_index(drop=True))  # fmt: skip


def test_an_interrupted_student_resumes_to_the_same_weights(cache):
    student = MICRO.students[0]
    spec, width, data = controlled.runs_of(MICRO)[0]
    straight = training.train_model(spec, width, data)
    weights = load_file(str(straight / f"step{spec.steps}" / "model.safetensors"))
    other = dataclasses.replace(spec, name="controlled-resumed")
    training.train_model(other, width, data, stop_after=spec.steps // 2)
    assert not (models.model_dir(other, width, data.identity) / "complete.json").exists()
    resumed = training.train_model(other, width, data)
    again = load_file(str(resumed / f"step{spec.steps}" / "model.safetensors"))
    assert all(torch.equal(weights[name], again[name]) for name in weights), student.label


def test_the_stream_never_repeats_a_window():
    spec, _, data = controlled.runs_of(MICRO)[0]
    first, second = data.batch(spec, 0), data.batch(spec, 1)
    assert first.shape == (8, 17) and not torch.equal(first, second)
    assert torch.equal(first, data.batch(spec, 0))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: controlled.Student(0), "width must be an integer >= 1"),
        (lambda: controlled.Student(8, "linear"), "unknown schedule 'linear'"),
        (lambda: controlled.Student(8, weight_decay=-1.0), "bad factor"),
        (lambda: controlled.grid_named("huge"), r"unknown grid 'huge': use one of \['cpu', 'gpu', 'live'\]"),
        (lambda: controlled.load_snapshot("none"), "make controlled GRID=none"),
    ],
)
def test_bad_input_is_one_line(make, match):
    with pytest.raises((ConfigurationError, MissingArtefactError), match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_the_grids_are_sized_as_documented():
    gpu = controlled.GRIDS["gpu"]
    assert {s.width for s in gpu.students} == {8, 16, 32, 128} and gpu.rank == 64
    narrow = next(s for s in gpu.students if s.width == 8)
    spec = gpu.spec(narrow)
    assert isinstance(spec, SuiteSpec) and spec.n_layers == 1
    assert spec.steps * spec.tokens_per_step / training.parameter_count(spec, 8) > 10_000


@pytest.mark.parametrize(
    ("saturated", "gaps", "finding"),
    [
        ([False, False, False], [0.2, 0.3, 0.0], "not decided at this length"),
        ([False, False, False], [0.01, 0.3, 0.0], "no student saturates"),
        ([True, True, False], [0.01, 0.3, 0.0], "every student narrower than the rank saturates"),
        ([True, False, False], [0.01, 0.3, 0.0], "1 of 2 students below the rank saturate"),
        ([True, False, True], [0.01, 0.3, 0.0], "students saturate below (1) and above (1)"),
    ],
)
def test_the_controlled_verdict_follows_its_criterion(saturated, gaps, finding):
    """Two students below the rank (8, 16) and one above (128): each branch of the criterion, on made-up verdicts."""
    columns = {"width": [8, 16, 128], "saturated": saturated, "final gap to floor": gaps,
               "tokens per parameter": [1e3, 1e3, 1e2], "rise after minimum": [0.02, 0.0, 0.0]}  # fmt: skip
    verdict = pd.DataFrame(columns)
    claim = controlled.controlled_claim(verdict, 64, "made-up verdicts")
    assert claim.verdict.startswith("tested beyond the paper: " + finding), claim.verdict
