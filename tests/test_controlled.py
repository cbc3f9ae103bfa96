"""satlib.controlled: the controlled test of the mechanism on a synthetic language, end to end on a micro grid."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from satlib import controlled, controlled_verdicts, models, training
from satlib.errors import ConfigurationError, MissingArtefactError
from satlib.specs import SuiteSpec
from satlib.storage import digest

MICRO = controlled.ControlledGrid(
    "micro", (controlled.Student(2, "constant", 0.0, batch_size=8), controlled.Student(8, batch_size=8),
              controlled.Student(3, batch_size=8, parallel=False, switch=0.5, seed=1)),
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
    assert {"heldout_loss", "floor", "floor_layer_norm", "entropy_rate", "gap_to_floor", "gap_to_layer_norm_floor",
            "singular_entropy", "effective_rank", *controlled.STUDENT_COLUMNS} <= set(table.columns)  # fmt: skip
    narrow = table[table.width == 2]
    assert (narrow.floor > narrow.entropy_rate).all()  # below the rank the floor is above the entropy rate
    assert (narrow.floor_layer_norm > narrow.floor).all()  # and the layer-norm class's floor above it
    wide = table[table.width == 8]  # at or above the rank: equal, up to the last bits of the float64 fit
    assert (wide.floor - wide.entropy_rate).abs().max() < 1e-12
    assert ((table.effective_rank >= 1 - 1e-9) & (table.effective_rank <= table.width + 1e-9)).all()
    verdict = controlled_verdicts.student_verdicts(table)
    assert len(verdict) == 3 and verdict["tokens per parameter"].gt(0).all()
    assert list(verdict.control) == [False, False, True] and list(verdict.seed) == [0, 0, 1]
    assert list(verdict.parallel) == [True, True, False]
    claim = controlled_verdicts.bottleneck_claim(verdict, MICRO.rank, 1.0, "a micro grid")
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
        (lambda: controlled.grid_named("huge"), r"unknown grid 'huge': use one of \['factors', 'gpu', 'live'\]"),
        (lambda: controlled.Student(8, final_lr=1.5), "final_lr in \\[0, 1\\]"),
        (lambda: controlled.Student(8, switch=1.0), "switch is a fraction of its steps in \\(0, 1\\), got 1.0"),
        (lambda: controlled.load_snapshot("none"), "make controlled GRID=none"),
    ],
)
def test_bad_input_is_one_line(make, match):
    with pytest.raises((ConfigurationError, MissingArtefactError), match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_the_grids_are_sized_as_documented():
    gpu, factors = controlled.GRIDS["gpu"], controlled.GRIDS["factors"]
    assert {s.width for s in gpu.students} == {8, 128} and gpu.rank == 64
    assert {s.width for s in factors.students} == {4, 64} and factors.rank == 32
    for grid in (gpu, factors):
        narrow = min(s.width for s in grid.students)
        spec = grid.spec(next(s for s in grid.students if s.width == narrow))
        assert isinstance(spec, SuiteSpec) and spec.n_layers == 1
        assert spec.steps * spec.tokens_per_step / training.parameter_count(spec, narrow) > 10_000
        arms = pd.Series([s.label.removesuffix(f", seed {s.seed}") for s in grid.students if s.width == narrow])
        assert (arms.value_counts().drop(next(a for a in arms if "switch" in a)) == 3).all()  # three seeds an arm
        assert sum(s.switch is not None for s in grid.students) == 1  # one positive control
        assert len({s.slug for s in grid.students}) == len(grid.students)  # each student has its own cache


def test_the_verdicts_read_a_students_own_defaults_where_a_table_lacks_a_factor():
    fields = {f.name: f.default for f in dataclasses.fields(controlled.Student)}
    assert controlled_verdicts.DEFAULTS == {name: fields[name] for name in controlled_verdicts.DEFAULTS}
    assert controlled.STUDENT_COLUMNS == tuple(controlled_verdicts.DEFAULTS)


def test_a_switched_stream_changes_worlds_at_its_step():
    plain, switched = (MICRO.batches(controlled.Student(2, switch=s)) for s in (None, 0.5))
    spec = MICRO.spec(controlled.Student(2))
    half = spec.steps // 2
    assert plain.identity != switched.identity and switched.identity.startswith(plain.identity)
    assert torch.equal(plain.batch(spec, half - 1), switched.batch(spec, half - 1))
    other = dataclasses.replace(MICRO, world_seed=MICRO.world_seed + 1).language(1.0)
    assert torch.equal(switched.batch(spec, half), other.batch(half, spec.batch_size, spec.context, 1))


def test_a_students_factors_reach_its_model_and_keep_the_old_keys():
    sequential = MICRO.spec(controlled.Student(2, parallel=False, final_lr=0.0, seed=2))
    assert not training.model_config(sequential, 2).use_parallel_residual and sequential.seed == 2
    assert sequential.learning_rate(sequential.steps) == pytest.approx(0.0, abs=1e-12)
    plain = MICRO.spec(controlled.Student(2))
    assert training.model_config(plain, 2).use_parallel_residual
    fields = dataclasses.asdict(plain)
    del fields["parallel_residual"]
    assert plain.identity() == fields and plain.key() == digest(fields, 10)
    assert plain.key() != dataclasses.replace(plain, parallel_residual=False).key()
