"""satlib.theory: the softmax bottleneck, Eckart–Young–Mirsky, and the loss-gap bound on small cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from satlib import metrics, theory


def test_bottleneck_rank_is_d_plus_one():
    table = theory.softmax_bottleneck_ranks([1, 3, 8, 40, 70], n_contexts=60, vocab=50)
    assert list(table.logit_rank) == [1, 3, 8, 40, 50]
    assert list(table.log_prob_rank) == [2, 4, 9, 41, 50]
    assert (table.log_prob_rank == table.bound).all()


def test_zipf_dirichlet_targets_are_distributions_of_full_log_rank():
    targets = theory.zipf_dirichlet_targets(40, 30, seed=1)
    assert targets.shape == (40, 30)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    assert np.all(targets > 0)
    assert metrics.numerical_rank(np.log(targets)) == 30
    with pytest.raises(ValueError):
        theory.zipf_dirichlet_targets(4, 1)


def test_fit_softmax_head_rank_capped_and_improves_with_width():
    targets = theory.zipf_dirichlet_targets(64, 32, seed=0)
    narrow, wide = (theory.fit_softmax_head(targets, d, steps=150) for d in (2, 16))
    assert metrics.numerical_rank(narrow.log_probs, rtol=1e-6) <= 2 + 2
    assert wide.kl < narrow.kl
    assert narrow.kl > 0


def test_truncated_head_is_best_rank_d():
    head = theory.ideal_head(30, theory.power_law_spectrum(10, 0.7, 5.0), seed=2)
    sigma = metrics.singular_values(head)
    np.testing.assert_allclose(sigma, theory.power_law_spectrum(10, 0.7, 5.0), rtol=1e-10)
    for d in (0, 1, 4, 9, 10):
        truncated = theory.truncated_head(head, d)
        error = np.linalg.norm(head - truncated) / np.linalg.norm(head)
        assert error == pytest.approx(metrics.w_error(sigma, d), abs=1e-12)
        assert metrics.numerical_rank(truncated) == d
        if 0 < d < 10:
            random_error = np.linalg.norm(head - theory.random_rank_d_head(head, d)) / np.linalg.norm(head)
            assert random_error > error


def test_loss_gap_zero_for_ideal_and_within_bound():
    head = theory.ideal_head(40, theory.power_law_spectrum(8, 0.5, 30.0), seed=0)
    contexts = theory.ideal_contexts(50, 8, seed=1)
    np.testing.assert_allclose(np.linalg.norm(contexts, axis=1), 1.0)
    assert theory.loss_gap(head, head, contexts) == pytest.approx(0.0, abs=1e-12)
    table = theory.loss_gap_table(head, contexts, widths=[1, 4, 7], steps=60)
    assert (table.gap_truncated > 0).all()
    assert (table.gap_truncated <= table.bound_spectral).all()
    assert (table.bound_spectral <= table.bound + 1e-12).all()
    assert (table.gap_optimised <= table.gap_truncated + 1e-9).all()
    assert table.gap_truncated.is_monotonic_decreasing


def test_theorem_bound_is_twice_tail_norm():
    sigma = np.array([3.0, 2.0, 1.0])
    assert theory.theorem_bound(sigma, 1, context_norm=2.0) == pytest.approx(2 * 2 * np.sqrt(5))


def test_mean_entropy_of_uniform():
    assert theory.mean_entropy(np.full((3, 8), 1 / 8)) == pytest.approx(np.log(8))


def _gaps(truncated: list[float], bound: list[float], uniform: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"d": range(1, len(bound) + 1), "gap_truncated": truncated, "gap_optimised": truncated,
         "bound": bound, "gap_uniform": uniform}
    )  # fmt: skip


def test_theorem_verdict_separates_an_informative_bound_from_a_vacuous_one():
    informative = theory.theorem_claim(_gaps([0.5, 0.1], [5.0, 0.9], uniform=2.0))
    vacuous = theory.theorem_claim(_gaps([0.5, 0.1], [50.0, 9.0], uniform=2.0))
    broken = theory.theorem_claim(_gaps([0.5, 1.0], [5.0, 0.9], uniform=2.0))
    assert informative.verdict == "reproduced" and "at 1 of 2 ranks" in informative.book_value
    assert vacuous.verdict == "verified (vacuous here)" and "at 0 of 2 ranks" in vacuous.book_value
    assert broken.verdict == "contradicted" and "holds at 1 of 2 ranks" in broken.book_value


def test_gap_of_uniform_predictions_is_the_gap_of_the_zero_head_and_bounds_the_best_rank_d_gap():
    head = theory.ideal_head(40, theory.power_law_spectrum(8, 0.5, 30.0), seed=0)
    contexts = theory.ideal_contexts(50, 8, seed=1)
    table = theory.loss_gap_table(head, contexts, widths=[1, 4], steps=60)
    targets = theory.ideal_distributions(head, contexts)
    by_hand = float(np.mean(np.sum(targets * np.log(targets * 40), axis=1)))  # KL(p || uniform) = log V - H(p)
    assert table.gap_uniform.to_numpy() == pytest.approx(by_hand, rel=1e-9)
    assert (table.gap_optimised <= table.gap_uniform).all()
