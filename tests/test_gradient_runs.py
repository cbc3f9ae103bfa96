"""satlib.gradient_runs: SpamLang's data, the choice of learning rates, resuming, and a micro grid end to end (its
rank-cut arms read the corpus's tokens from the book's cache, like every test after `make suite`)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from satlib import config, gradient_runs
from satlib import gradient_bottleneck as gb
from satlib.errors import ConfigurationError, MissingArtefactError

MICRO = gradient_runs.GRIDS["micro"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache that shares only the corpus and its tokenizers with the book's."""
    book_cache = config.cache_dir()
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for name in ("corpus", "tokenizers", "downloads"):
        if (book_cache / name).exists():
            (fresh / name).symlink_to(book_cache / name)
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(fresh))
    torch.set_num_threads(1)
    return tmp_path


def test_a_pool_is_fixed_per_vocabulary_and_windows_repeat_one_symbol():
    pool = gradient_runs.pool_symbols(4096, 256)
    assert len(pool) == len(set(pool.tolist())) == 256 and pool.max() < 4096
    assert torch.equal(pool, gradient_runs.pool_symbols(4096, 256))
    assert torch.equal(gradient_runs.pool_symbols(200, 256), torch.arange(200))  # a pool as large as V is all V
    windows = gradient_runs.spamlang_windows(pool, 64, 8, seed=3, step=5)
    assert windows.shape == (64, 9) and (windows == windows[:, :1]).all()
    assert set(windows[:, 0].tolist()) <= set(pool.tolist())
    assert torch.equal(windows, gradient_runs.spamlang_windows(pool, 64, 8, seed=3, step=5))
    assert not torch.equal(windows, gradient_runs.spamlang_windows(pool, 64, 8, seed=3, step=6))


def test_cells_put_a_vocabulary_no_larger_than_the_pool_in_one_cell():
    assert MICRO.cells() == [(32, 8, None), (128, 8, None), (128, 8, 32)]


def test_the_chosen_rate_is_the_fewest_steps_then_the_best_accuracy_then_the_smaller_rate():
    rows = [
        {"vocab": 64, "width": 8, "pool": 64, "rate": 0.01, "steps_to_accuracy": None, "steps_run": 100,
         "final_accuracy": 0.5},
        {"vocab": 64, "width": 8, "pool": 64, "rate": 0.003, "steps_to_accuracy": 40, "steps_run": 40,
         "final_accuracy": 0.92},
        {"vocab": 64, "width": 8, "pool": 64, "rate": 0.001, "steps_to_accuracy": 40, "steps_run": 40,
         "final_accuracy": 0.95},
        {"vocab": 256, "width": 8, "pool": 64, "rate": 0.01, "steps_to_accuracy": None, "steps_run": 100,
         "final_accuracy": 0.4},
        {"vocab": 256, "width": 8, "pool": 64, "rate": 0.003, "steps_to_accuracy": None, "steps_run": 100,
         "final_accuracy": 0.6},
    ]  # fmt: skip
    assert gradient_runs.chosen_rates(pd.DataFrame(rows)) == {(64, 8, 64): 0.001, (256, 8, 64): 0.003}


def test_the_cache_key_of_a_run_ignores_the_rest_of_the_grid():
    import dataclasses

    task = ("spamlang", 32, 8, None, 0.01, 1, "test")
    other = dataclasses.replace(MICRO, seeds=(7,), cut_ranks=(3,), vocabs=(32,))
    assert gradient_runs.run_key(MICRO, task) == gradient_runs.run_key(other, task)
    finer = dataclasses.replace(MICRO, eval_every=5)
    assert gradient_runs.run_key(MICRO, task) != gradient_runs.run_key(finer, task)
    with pytest.raises(ConfigurationError, match="needs a rank"):
        gradient_runs.rank_cut_run(MICRO, "backward cut", 1)


def test_an_unknown_grid_or_arm_or_a_missing_snapshot_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigurationError, match="unknown gradient grid 'big'"):
        gradient_runs.grid_named("big")
    with pytest.raises(ConfigurationError, match="unknown arm"):
        gradient_runs.rank_cut_run(MICRO, "half head", 1, 2)
    with pytest.raises(MissingArtefactError, match="make gradient GRID=micro"):
        gradient_runs.load_snapshot("micro", tmp_path)


def test_a_finished_run_is_read_back_not_trained_again(cache, monkeypatch):
    task = ("spamlang", 32, 8, None, 0.01, 1, "test")
    first = gradient_runs._cached(MICRO, task)
    assert first["vocab"] == 32 and first["steps_run"] <= MICRO.max_steps and first["curve"][0][0] == 0

    def refuse(*_):
        raise AssertionError("trained again")

    monkeypatch.setattr(gradient_runs, "spamlang_run", refuse)
    assert gradient_runs._cached(MICRO, task) == first


def test_a_micro_grid_end_to_end(cache):
    result = gradient_runs.run(MICRO, snapshot=cache / "gradient-micro.json")
    provenance = result["provenance"]
    assert provenance["grid"]["name"] == "micro" and provenance["cpu_seconds"] >= 0 and provenance["machine"]
    spam, cut, read = gradient_runs.load_snapshot("micro", cache)
    assert read == pd.read_json(cache / "gradient-micro.json", typ="series")["provenance"]
    cells, rates, seeds = len(MICRO.cells()), len(MICRO.rates), len(MICRO.seeds)
    assert (spam.role == "validation").sum() == cells * rates and (spam.role == "test").sum() == cells * seeds
    chosen = gradient_runs.chosen_rates(spam[spam.role == "validation"])
    for _, row in spam[spam.role == "test"].iterrows():
        assert row.rate == chosen[row.vocab, row.width, row.pool]  # the test seeds run at the chosen rate
    assert sorted(cut.arm.unique()) == sorted(gradient_runs.ARMS)
    assert len(cut) == (1 + 2 * len(MICRO.cut_ranks)) * seeds  # the full head once per seed, not per rank
    assert (cut.test_loss > 0).all() and cut.curve.map(len).eq(MICRO.cut_curve_points + 1).all()
    initial = cut.curve.map(lambda c: c[0][1])
    assert initial[cut.arm == "full head"].tolist() == initial[cut.arm == "backward cut"].tolist()  # same weights
    full, backward = (
        cut[cut.arm == arm].sort_values("seed").test_loss.tolist() for arm in ("full head", "backward cut")
    )
    assert all(a != b for a, b in zip(full, backward, strict=True))  # the cut changed the training
    assert gb.spamlang_claim(spam, MICRO.pool, "micro", MICRO.eval_every, MICRO.rates).id == "x-spamlang"
    assert gb.rank_cut_claim(cut, "micro").id == "x-backward-rank-cut"
