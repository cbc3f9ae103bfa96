"""satlib.metrics against closed forms and naive implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from satlib import metrics


def naive_anisotropy(hidden: np.ndarray) -> float:
    unit = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    pairs = itertools.permutations(range(len(hidden)), 2)
    return float(np.mean([unit[i] @ unit[j] for i, j in pairs]))


def regular_simplex(n: int) -> np.ndarray:
    """n unit vectors in R^n with pairwise cosine -1/(n-1): centred standard basis."""
    vertices = np.eye(n) - 1.0 / n
    return vertices / np.linalg.norm(vertices, axis=1, keepdims=True)


@pytest.mark.parametrize(("d", "expected"), [(1, 0.597614), (2, 0.267261)])
def test_w_error_closed_form(d, expected):
    assert metrics.w_error([3, 2, 1], d) == pytest.approx(expected, abs=1e-6)


def test_w_error_extremes_and_order():
    assert metrics.w_error([3, 2, 1], 0) == pytest.approx(1.0)
    assert metrics.w_error([3, 2, 1], 3) == 0.0
    assert metrics.w_error([1, 3, 2], 1) == pytest.approx(np.sqrt(5 / 14))  # order of input irrelevant


def test_w_error_is_eckart_young_distance():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((40, 12))
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    for d in range(13):
        truncated = (u[:, :d] * s[:d]) @ vt[:d]
        expected = np.linalg.norm(matrix - truncated) / np.linalg.norm(matrix)
        assert metrics.w_error(s, d) == pytest.approx(expected, abs=1e-12)


def test_w_error_curve_matches_pointwise():
    sigma = np.random.default_rng(1).gamma(1.0, size=30)
    curve = metrics.w_error_curve(sigma)
    assert curve.shape == (31,)
    np.testing.assert_allclose(curve, [metrics.w_error(sigma, d) for d in range(31)], atol=1e-12)
    assert np.all(np.diff(curve) <= 1e-15)


@pytest.mark.parametrize(
    ("values", "d", "match"),
    [([3, 2, 1], 4, "d must be"), ([3, 2, 1], -1, "d must be"), ([3, 2, 1], 1.5, "d must be"),
     ([3, -1], 1, "non-negative"), ([np.nan, 1], 1, "NaN"), ([], 0, "non-empty"), ([0, 0], 1, "all zero"),
     ([[1, 2]], 1, "1-D")],
)  # fmt: skip
def test_w_error_bad_input(values, d, match):
    with pytest.raises(ValueError, match=match):
        metrics.w_error(values, d)


def test_anisotropy_collinear_is_one():
    direction = np.array([1.0, -2.0, 0.5])
    hidden = np.outer(np.arange(1, 9), direction)
    assert metrics.anisotropy(hidden) == pytest.approx(1.0)


@pytest.mark.parametrize("n", [2, 3, 5, 17])
def test_anisotropy_regular_simplex_is_lower_bound(n):
    assert metrics.anisotropy(regular_simplex(n)) == pytest.approx(-1.0 / (n - 1), abs=1e-12)


def test_anisotropy_isotropic_gaussian_tends_to_zero():
    rng = np.random.default_rng(0)
    values = [abs(metrics.anisotropy(rng.standard_normal((n, 64)))) for n in (100, 10_000)]
    assert values[1] < 1e-3 < values[0] + 1e-3
    assert values[1] < values[0]


def test_anisotropy_matches_naive_and_accepts_tensors():
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((30, 8)) + 2.0  # a shared offset makes it anisotropic
    expected = naive_anisotropy(hidden)
    assert metrics.anisotropy(hidden) == pytest.approx(expected, abs=1e-12)
    assert metrics.anisotropy(torch.tensor(hidden, dtype=torch.float32)) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros(4), np.array([[1.0, 0.0], [0.0, 0.0]])])
def test_anisotropy_bad_input(bad):
    with pytest.raises(ValueError):
        metrics.anisotropy(bad)


def test_effective_rank_closed_forms():
    assert metrics.effective_rank(metrics.singular_values(np.eye(7))) == pytest.approx(7.0)
    rank_one = np.outer(np.arange(1.0, 6.0), np.arange(1.0, 4.0))
    assert metrics.effective_rank(metrics.singular_values(rank_one)) == pytest.approx(1.0, abs=1e-9)


def test_singular_entropy_closed_forms_and_naive():
    assert metrics.singular_entropy(np.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert metrics.singular_entropy([5.0, 0.0, 0.0, 0.0]) == pytest.approx(np.log(4))
    sigma = np.array([4.0, 2.0, 1.0, 1.0])
    for power in (1, 2):
        p = sigma**power / np.sum(sigma**power)
        naive = float(np.sum(p * np.log(p / (1 / len(p)))))
        assert metrics.singular_entropy(sigma, power=power) == pytest.approx(naive)
    with pytest.raises(ValueError, match="power"):
        metrics.singular_entropy(sigma, power=0)


def test_normalised_spectrum_and_numerical_rank():
    np.testing.assert_allclose(metrics.normalised_spectrum([1.0, 4.0, 2.0]), [1.0, 0.5, 0.25])
    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 15))
    assert metrics.numerical_rank(low_rank) == 3
    assert metrics.numerical_rank(np.zeros((4, 4))) == 0


def test_frequency_alignment_detects_a_frequency_direction():
    rng = np.random.default_rng(0)
    log_frequency = np.log(rng.zipf(1.5, 500).astype(float))
    direction = (log_frequency - log_frequency.mean()) / np.linalg.norm(log_frequency - log_frequency.mean())
    head = 10.0 * np.outer(direction, rng.standard_normal(8)) + 0.01 * rng.standard_normal((500, 8))
    aligned = metrics.frequency_alignment(head, log_frequency, k=3)
    assert aligned.shape == (3,) and aligned[0] > 0.95 > aligned[1]
    assert metrics.frequency_alignment(rng.standard_normal((500, 8)), log_frequency, k=1)[0] < 0.2
    with pytest.raises(ValueError, match="log_frequency"):
        metrics.frequency_alignment(head, log_frequency[:10])


def test_anisotropy_from_unit_sum_streams():
    rng = np.random.default_rng(5)
    hidden = rng.standard_normal((50, 6)) + 1.0
    units = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    streamed = metrics.anisotropy_from_unit_sum(units[:20].sum(0) + units[20:].sum(0), 50)
    assert streamed == pytest.approx(naive_anisotropy(hidden), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.anisotropy_from_unit_sum(units[0], 1)
