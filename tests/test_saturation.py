"""satlib.saturation, satlib.long_run and satlib.shapes: the verdict on known curves, the singular-entropy
normalisation against its closed form, the committed snapshot's completeness, the shapes and their seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from satlib import long_run, models, saturation, shapes, specs, spectra, training
from satlib.errors import MissingArtefactError


def test_long_run_schedules():
    cosine, constant = long_run.long_runs(steps=1000)
    assert (cosine.schedule, constant.schedule) == ("cosine", "constant")
    assert cosine.key() != constant.key()  # separate caches
    assert cosine.learning_rate(999) == pytest.approx(0.1 * cosine.peak_lr, rel=1e-3)


@pytest.mark.parametrize("width", [4, 128, 768])
@pytest.mark.parametrize("power", [1, 2])
def test_collapsed_entropy_matches_a_direct_computation(width, power):
    sigma = np.full(width, 0.01)
    sigma[0] = 1.0
    assert spectra.collapsed_entropy(0.01, width, power) == pytest.approx(
        __import__("satlib.metrics", fromlist=["singular_entropy"]).singular_entropy(sigma, power), rel=1e-9
    )


def test_the_issues_worked_example_of_the_normalisation():
    """All ratios at 0.01 and d = 128: KL 1.46 with sigma normalised, 4.72 with sigma squared (ln 128 = 4.85)."""
    assert spectra.collapsed_entropy(0.01, 128, 1) == pytest.approx(1.46, abs=0.01)
    assert spectra.collapsed_entropy(0.01, 128, 2) == pytest.approx(4.72, abs=0.01)


def test_the_adopted_normalisation_is_what_the_papers_figures_support():
    from satlib.data import paper_values

    figure4, figure5 = paper_values("fig4_spectrum_ratios"), paper_values("fig5_singular_entropy")
    table = spectra.paper_normalisation(spectra.collapsed_ratios(figure4), spectra.collapse_plateaus(figure5))
    assert spectra.supported_power(table) == spectra.SINGULAR_ENTROPY_POWER == 2


def curve_table(heldout: list[float], train: list[float], anisotropy: list[float] | None = None) -> pd.DataFrame:
    steps = np.arange(len(heldout)) * 100
    anisotropy = anisotropy or [0.3] * len(heldout)
    return pd.DataFrame({"run": "cosine d=4", "step": steps, "tokens_per_parameter": steps * 0.1,
                         "heldout_loss": heldout, "train_loss": train, "last_anisotropy": anisotropy,
                         "singular_entropy": [0.5] * len(heldout)})  # fmt: skip


def test_verdict_on_known_curves():
    falling = saturation.saturation_verdict(curve_table([5, 4, 3.5, 3.4], [5, 4, 3.5, 3.4])).iloc[0]
    assert not falling.saturated and not falling.overfitting and falling["lowest held-out loss at step"] == 300
    rising = saturation.saturation_verdict(curve_table([5, 4, 3.5, 3.6], [5, 4, 3.5, 3.6], [0.3, 0.3, 0.3, 0.9]))
    assert rising.iloc[0].saturated and rising.iloc[0]["anisotropy jumped"]
    assert rising.iloc[0]["held-out rise after minimum"] == pytest.approx(0.1)
    overfit = saturation.saturation_verdict(curve_table([5, 4, 3.5, 3.6], [5, 4, 3.4, 3.0])).iloc[0]
    assert overfit.overfitting and not overfit.saturated


def test_spectrum_phases_find_peak_minimum_and_rebound():
    table = curve_table([8, 7, 6, 5, 4.9, 4.8], [8, 7, 6, 5, 4.9, 4.8])
    table["singular_entropy"] = [0.001, 0.8, 0.3, 0.1, 0.15, 0.2]  # flat, frequency phase, flattening, re-steepening
    phases = spectra.spectrum_phases(table, early=0.25).iloc[0]
    assert phases.peak == 0.8 and phases["minimum after the peak"] == 0.1
    assert phases["minimum at tokens per parameter"] == pytest.approx(30.0)
    assert phases.rebound == pytest.approx(2.0)
    table["singular_entropy"] = [0.001, 0.8, 0.3, 0.1, 0.9, 2.0]  # a collapse beyond the warm-up peak
    collapsed = spectra.spectrum_phases(table, early=0.25).iloc[0]
    assert collapsed.peak == 0.8 and collapsed.rebound == pytest.approx(20.0)


def test_missing_snapshot_names_the_command(tmp_path):
    with pytest.raises(MissingArtefactError, match="make long-run"):
        long_run.load_snapshot(tmp_path / "none.json")


def test_committed_snapshot_is_complete_and_has_provenance():
    table, provenance = long_run.load_snapshot()
    for field in ("command", "commit", "date", "machine", "wall_seconds", "specs", "training", "widths_trained"):
        assert provenance[field], field
    assert provenance["command"].startswith(("python -m satlib long-run", "python -m satlib.saturation run"))
    widths = provenance["widths_trained"]
    expected_runs = {(spec["schedule"], width) for spec in provenance["specs"] for width in widths}
    assert set(zip(table.schedule, table.width, strict=True)) == expected_runs  # every trained run is there
    assert {schedule for schedule, _ in expected_runs} == set(specs.SCHEDULES)
    for spec in provenance["specs"]:
        fields = {"name": spec.get("name", spec.get("preset")), "widths": tuple(spec["widths"]),
                  **{k: v for k, v in spec.items() if k not in ("name", "preset", "widths")}}  # fmt: skip
        expected = specs.SuiteSpec(**fields).checkpoint_steps()
        for width, group in table[table.schedule == spec["schedule"]].groupby("width"):
            assert group.step.tolist() == expected, f"{spec['schedule']} d={width}: checkpoints missing"
    assert table.heldout_loss.between(0, 9).all() and table.train_loss.between(0, 9).all()
    assert table.last_anisotropy.between(-0.05, 1.0).all()
    assert json.loads(long_run.SNAPSHOT.read_text())["rows"][0]["step"] == 0


@pytest.mark.slow
def test_shape_comparison_trains_each_shape_and_seed_once_and_reuses_the_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path))
    base = specs.SuiteSpec(name="tiny", widths=(16,), steps=20, batch_size=2, context=16, checkpoints_evenly=2)
    monkeypatch.setattr(long_run, "SAMPLE_TOKENS", 512)
    assert shapes.shape_spec(16, 2, base) is base  # the suite's own model, its cache reused
    deeper = shapes.shape_spec(8, 3, base, seed=1)
    assert (deeper.widths, deeper.n_layers, deeper.steps, deeper.seed) == (
        (8,),
        3,
        20,
        1,
    ) and deeper.key() != base.key()
    table = shapes.shape_comparison(((16, 2), (8, 3)), seeds=(0, 1), base=base)
    assert table.run.unique().tolist() == ["d=16, 2 layers", "d=8, 3 layers"]
    assert table.groupby(["run", "seed"]).step.apply(list).tolist() == [[0, 10, 20]] * 4
    data = training.CorpusBatches(base.vocab_size)
    assert (models.model_dir(base, 16, data.identity) / "complete.json").is_file()
    assert table.groupby("run").layers.first().tolist() == [2, 3]
    assert table.parameters.iloc[0] > table.parameters.iloc[-1]
    assert np.all(table.heldout_loss.groupby(table.run).last() < np.log(4096))  # trained
    final = table[table.step == 20].set_index(["run", "seed"]).heldout_loss
    assert final["d=16, 2 layers", 0] != final["d=16, 2 layers", 1]  # another seed, another model
    assert {"tokens_per_parameter", "last_anisotropy", "singular_entropy"} <= set(table.columns)
    monkeypatch.setattr(training, "_train", lambda *args, **kwargs: pytest.fail("trained again"))
    pd.testing.assert_frame_equal(shapes.shape_comparison(((16, 2), (8, 3)), seeds=(0, 1), base=base), table)


def test_evaluation_degradation_on_known_curves():
    """Perplexity (lower is better) and accuracy (higher is better) curves whose best and final values are known."""
    steps = [1000, 20000, 80000, 143000]
    ppl = pd.DataFrame({"small": [90.0, 30.0, 24.0, 36.0], "large": [50.0, 10.0, 6.0, 5.0]}, index=steps)
    table = saturation.evaluation_degradation(ppl, lower_is_better=True, from_step=20000)
    assert table.loc["small", "best step"] == 80000 and table.loc["small", "degradation"] == pytest.approx(1.5)
    assert table.loc["large", "degradation"] == pytest.approx(1.0) and table.loc["large", "best"] == 5.0
    accuracy = pd.DataFrame({"small": [0.1, 0.4, 0.5, 0.25]}, index=steps)
    falling = saturation.evaluation_degradation(accuracy, lower_is_better=False, from_step=20000)
    assert falling.loc["small", "degradation"] == pytest.approx(2.0) and falling.loc["small", "final"] == 0.25
    assert saturation.evaluation_degradation(ppl, True, from_step=100000).loc["small", "best step"] == 143000


def test_after_minimum_skips_missing_measurements():
    run = pd.DataFrame({"heldout_loss": [np.nan, 3.0, 2.5, 2.6], "last_anisotropy": [0.1, 0.2, 0.2, 0.65],
                        "singular_entropy": [1.0, 1.0, 1.0, 1.5]})  # fmt: skip
    best, rise, anisotropy_jumped, entropy_jumped = saturation.after_minimum(run)
    assert best == 2 and rise == pytest.approx(0.1) and anisotropy_jumped and not entropy_jumped


def test_a_jump_is_the_books_one_factor_strictly():
    """COLLAPSE_FACTOR on each measure's scale: singular entropy multiplied by it, anisotropy's distance to 1
    divided by it (strictly)."""
    factor = saturation.COLLAPSE_FACTOR
    run = pd.DataFrame({"heldout_loss": [3.0, 2.5, 2.6], "last_anisotropy": [0.1, 0.6, 1 - 0.4 / factor - 1e-6],
                        "singular_entropy": [1.0, 1.0, factor + 1e-6]})  # fmt: skip
    _, _, anisotropy_jumped, entropy_jumped = saturation.after_minimum(run)
    assert not anisotropy_jumped and entropy_jumped  # not quite halved is not a jump
    run.loc[2, "last_anisotropy"] = 1 - 0.4 / factor + 1e-6
    assert saturation.after_minimum(run).anisotropy_jumped  # 0.6 could never double; it can come twice as close
    run.loc[2, "last_anisotropy"] = 0.6 * factor if 0.6 * factor <= 1 else 0.99
    assert saturation.after_minimum(run).anisotropy_jumped


def _collapses(peaks: list[float], minima: list[float], late: list[float]) -> pd.DataFrame:
    table = pd.DataFrame(
        {"peak": peaks, "minimum": minima, "late maximum": late}, index=[f"m{i}" for i in range(len(peaks))]
    )
    return table.assign(fell=table.minimum < 0.5 * table.peak, collapsed=table["late maximum"] > 2 * table.minimum)


def test_entropy_phases_text_follows_the_computed_counts_and_ranges():
    paper = pd.Series([0.19, 0.31])
    none_fell = spectra.entropy_phases_text(_collapses([2.66, 1.0], [2.646, 0.8], [3.04, 0.9]), paper)
    assert "do not flatten" in none_fell and "in none of the 2 models" in none_fell
    assert "0.80 to 0.99 times the peak" in none_fell and "0.19 to 0.31" in none_fell
    assert "No collapse follows: the largest late rise is 1.15 times" in none_fell
    some = spectra.entropy_phases_text(_collapses([2.0, 1.0], [0.5, 0.8], [0.6, 0.9]), paper)
    assert "flatten in 1 of the 2 models" in some and "In the others (m1) it stays at 0.80 to 0.80" in some
    every = spectra.entropy_phases_text(_collapses([2.0, 1.0], [0.5, 0.2], [2.0, 0.3]), paper)
    assert "every one of the models" in every and "reaching 0.20 to 0.50" in every
    assert "A collapse follows in 1 of the 2 models (m0): a late rise of up to 4.00 times" in every


def test_snapshot_provenance_keeps_the_writing_session_apart_from_each_models_training():
    _, provenance = long_run.load_snapshot()
    session, training = long_run.provenance_tables(provenance)
    values = session.iloc[:, 0]
    assert values["wall_seconds"] == provenance["wall_seconds"]
    assert values["trained_this_session"] == (
        ", ".join(provenance["trained_this_session"]) or "none (measurements only)"
    )
    assert set(training.index) == set(provenance["training"])
    assert {"seconds_last_session", "tokens_per_second_last_session", "commit", "finished"} <= set(training.columns)
    old = {key: value for key, value in provenance.items() if key != "trained_this_session"}
    assert long_run.provenance_tables(old)[0].iloc[:, 0]["trained_this_session"] == "not recorded"
