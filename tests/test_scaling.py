"""satlib.scaling: the Chinchilla law, its batched fit, and agreement with a per-start scipy loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from satlib import scaling

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def synthetic(n_points: int = 40, noise: float = 0.002, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), n_points))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), n_points))
    loss = scaling.chinchilla_loss(n, d, **TRUE) * np.exp(rng.normal(0.0, noise, n_points))
    return n, d, loss


def scipy_best(n, d, loss, fixed, delta):
    """Independent baseline: scipy's L-BFGS-B from every grid start, one call each."""
    objective = scaling.HuberObjective(n, d, loss, fixed, delta)
    best = np.inf
    for start in np.unique(scaling.initial_grid()[:, objective.free], axis=0):
        result = minimize(lambda x: tuple(v[0] for v in objective(x[None])), start, jac=True, method="L-BFGS-B")
        best = min(best, result.fun)
    return best


def test_grid_has_hoffmann_4500_starts():
    grid = scaling.initial_grid()
    assert grid.shape == (4500, 5)
    assert sorted(np.unique(grid[:, 1])) == [0, 5, 10, 15, 20, 25]


def test_objective_gradient_matches_finite_differences():
    n, d, loss = synthetic(10)
    objective = scaling.HuberObjective(n, d, loss, {}, 1e-3)
    x = np.array([[0.4, 6.0, 6.1, 0.3, 0.3], [0.6, 5.0, 7.0, 0.5, 0.2]])
    _, gradient = objective(x)
    for j in range(5):
        step = np.zeros_like(x)
        step[:, j] = 1e-6
        numeric = (objective(x + step)[0] - objective(x - step)[0]) / 2e-6
        np.testing.assert_allclose(gradient[:, j], numeric, rtol=1e-4, atol=1e-8)


def test_recovers_known_parameters_from_noisy_data():
    n, d, loss = synthetic(60, noise=0.001)
    fit = scaling.fit_chinchilla(n, d, loss)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.E == pytest.approx(TRUE["E"], abs=0.05)
    np.testing.assert_allclose(fit.predict(n, d), scaling.chinchilla_loss(n, d, **TRUE), rtol=5e-3)


def test_batched_fit_reaches_scipy_best_objective():
    n, d, loss = synthetic(20, noise=0.005, seed=3)
    fit = scaling.fit_chinchilla(n, d, loss)
    assert fit.objective <= scipy_best(n, d, loss, {}, 1e-3) * (1 + 1e-6)


def test_fixed_parameters_stay_fixed_and_match_scipy():
    n, d, loss = synthetic(12, seed=1)
    fixed = {"E": 1.69, "B": 410.7, "beta": 0.28}
    fit = scaling.fit_chinchilla(n, d, loss, fixed=fixed)
    assert (fit.E, fit.B, fit.beta) == pytest.approx((1.69, 410.7, 0.28), rel=1e-12)
    assert fit.fixed == ("E", "B", "beta")
    assert fit.objective == pytest.approx(scipy_best(n, d, loss, fixed, 1e-3), rel=1e-6, abs=1e-14)


def test_large_delta_is_least_squares_on_log_loss():
    n, d, loss = synthetic(12, noise=0.02, seed=2)
    fit = scaling.fit_chinchilla(n, d, loss, fixed={"E": 1.69, "B": 410.7, "beta": 0.28}, delta=1e3)
    residual = np.log(fit.predict(n, d)) - np.log(loss)
    assert fit.objective == pytest.approx(0.5 * np.sum(residual**2), rel=1e-9)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([1e8, 1e9], [1e10], [3.0, 2.5]), {}, "same length"),
        (([1e8, -1e9], [1e10, 1e10], [3.0, 2.5]), {}, "n_params must be positive"),
        (([1e8, 1e9], [1e10, 1e10], [3.0, np.nan]), {}, "loss contains NaN"),
        (([], [], []), {}, "no data points"),
        (([1e8], [1e10], [3.0]), {"fixed": {"gamma": 1.0}}, "cannot fix"),
        (([1e8], [1e10], [3.0]), {"fixed": {"E": -1.0}}, "positive"),
        (([1e8], [1e10], [3.0]), {"fixed": dict(TRUE)}, "nothing to fit"),
        (([1e8], [1e10], [3.0]), {"delta": 0.0}, "delta"),
    ],
)
def test_bad_input_is_a_clear_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scaling.fit_chinchilla(*args, **kwargs)


def test_relative_gap():
    np.testing.assert_allclose(scaling.relative_gap([3.3, 2.0], [3.0, 2.0]), [0.1, 0.0])
