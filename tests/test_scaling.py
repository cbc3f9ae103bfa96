"""satlib.scaling: the Chinchilla law, its batched fit, agreement with a per-start scipy loop, and fits that refuse
(or warn about) what the data cannot determine."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from satlib import scaling
from satlib.errors import FitError

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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed fit warns of nothing
        fit = scaling.fit_chinchilla(n, d, loss)
    assert fit.at_bound == () and fit.undetermined == ()
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
        (([1e8, -1e9], [1e10, 1e10], [3.0, 2.5]), {}, "n_params must be positive .*got -1e\\+09 at index 1"),
        (([1e8, 1e9], [0.0, 1e10], [3.0, 2.5]), {}, "n_tokens must be positive"),
        (([1e8, 1e9], [1e10, 1e10], [3.0, np.nan]), {}, "loss contains NaN or infinity \\(at index 1\\)"),
        (([1e8, 1e9], [np.inf, 1e10], [3.0, 2.5]), {}, "n_tokens contains NaN or infinity \\(at index 0\\)"),
        (([], [], []), {}, "no data points"),
        (([1e8], [1e10], [3.0]), {"fixed": {"gamma": 1.0}}, "cannot fix"),
        (([1e8], [1e10], [3.0]), {"fixed": {"E": -1.0}}, "positive"),
        (([1e8], [1e10], [3.0]), {"fixed": dict(TRUE)}, "nothing to fit"),
    ],
)
def test_bad_input_is_a_clear_error(args, kwargs, match):
    with pytest.raises(FitError, match=match) as error:
        scaling.fit_chinchilla(*args, **kwargs)
    assert "\n" not in str(error.value)


#: Four points on distinct N and D, with losses the law gives (TRUE).
N4 = np.array([1e7, 1e8, 1e9, 1e10])
D4 = np.array([1e9, 1e10, 1e11, 1e12])
PAPER_FIXED = {"E": 1.69, "B": 410.7, "beta": 0.28}


@pytest.mark.parametrize("delta", [float("nan"), float("inf"), 0.0, -1e-3, "1e-3", True])
def test_delta_must_be_a_positive_finite_number(delta):
    loss = scaling.chinchilla_loss(N4, D4, **TRUE)
    with pytest.raises(FitError, match=f"delta must be a positive finite number .*got {delta!r}$"):
        scaling.fit_chinchilla(N4, D4, loss, fixed=PAPER_FIXED, delta=delta)


@pytest.mark.parametrize(
    ("n", "d", "fixed", "match"),
    [
        # one point, all five free (the fit used to return alpha ~ 25 at objective 0)
        ([1e8], [1e10], None, r"^1 distinct \(N, D\) point cannot determine 5 free parameters \(E, A, B, alpha, bet"),
        # two points, all five free (the fit used to return E ~ 1e-25)
        ([1e8, 1e9], [1e10, 2e10], None, "^2 distinct \\(N, D\\) points cannot determine 5 free parameters"),
        # repeats of one point count once
        ([1e8, 1e8, 1e8], [1e10, 1e10, 1e10], {"E": 1.69, "B": 410.7, "beta": 0.28},
         "^1 distinct \\(N, D\\) point cannot determine 2 free parameters \\(A, alpha\\)"),
        # the paper's fit of A and alpha, but every point at one N: only A / N**alpha at that N is seen
        ([1e8] * 4, D4, PAPER_FIXED, r"no side of the law \(free A, alpha need 2 distinct N, the data have 1"),
        # E, A and alpha free on two sizes: a power law plus a constant needs three
        ([1e8, 1e8, 1e9, 1e9], D4, {"B": 410.7, "beta": 0.28}, "free A, alpha, E need 3 distinct N, the data have 2"),
    ],
)  # fmt: skip
def test_fits_the_data_cannot_determine_are_refused(n, d, fixed, match):
    loss = scaling.chinchilla_loss(np.asarray(n), np.asarray(d), **TRUE)
    with pytest.raises(FitError, match=match) as error:
        scaling.fit_chinchilla(n, d, loss, fixed=fixed)
    assert "\n" not in str(error.value)


def test_losses_at_or_below_a_fixed_e_are_refused():
    with pytest.raises(FitError, match=r"^loss 1.5 at N=1e\+07, D=1e\+09 is at or below the fixed E = 1.69 \(4 of 4"):
        scaling.fit_chinchilla(N4, D4, [1.5, 1.4, 1.3, 1.2], fixed={"E": 1.69})  # used to give alpha ~ 3,800
    with pytest.raises(FitError, match=r"loss 1.69 .* at or below the fixed E = 1.69 \(1 of 4"):
        scaling.fit_chinchilla(N4, D4, [3.0, 2.5, 2.0, 1.69], fixed={"E": 1.69})
    # above E, but below E + B / D**beta with B and beta fixed too: no positive A reaches it
    loss = scaling.chinchilla_loss(N4, D4, **TRUE)
    loss[-1] = 1.69 + 410.7 / D4[-1] ** 0.28 - 1e-3
    with pytest.raises(FitError, match=r"at or below the law's fixed part E \+ B/D\^beta = 1.86928 \(1 of 4"):
        scaling.fit_chinchilla(N4, D4, loss, fixed=PAPER_FIXED)


def test_paper_fit_on_one_token_count_warns_of_nothing():
    """Paper §3: A and alpha on six sizes, all at one D, with E, B and beta fixed: B and beta are not determined by
    such data, but they are fixed, so the fit is well posed."""
    n = np.array([4.1e8, 1.0e9, 1.4e9, 2.8e9, 6.9e9, 1.2e10])
    d = np.full(6, 3e11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = scaling.fit_chinchilla(n, d, scaling.chinchilla_loss(n, d, **TRUE), fixed=PAPER_FIXED)
    assert (fit.A, fit.alpha) == pytest.approx((TRUE["A"], TRUE["alpha"]), rel=1e-4)
    assert fit.at_bound == () and fit.undetermined == ()


def test_all_five_free_on_one_token_count_warns_that_b_and_beta_are_not_determined():
    """Chapter 01's exercise: all five constants on six sizes at one D."""
    n = np.array([4.1e8, 1.0e9, 1.4e9, 2.8e9, 6.9e9, 1.2e10])
    d = np.full(6, 3e11)
    loss = scaling.chinchilla_loss(n, d, **TRUE) * np.exp(np.random.default_rng(0).normal(0.0, 0.003, 6))
    with pytest.warns(scaling.FitWarning) as caught:
        fit = scaling.fit_chinchilla(n, d, loss)
    messages = [str(w.message) for w in caught]
    assert any(
        m.startswith("fit_chinchilla: ")
        and "B, beta are not determined by the data (every point has D = 3e+11, so only E + B/D^beta is determined)"
        in m
        for m in messages
    ), messages
    assert all("\n" not in m for m in messages)
    assert {"B", "beta"} <= set(fit.undetermined) and not {"A", "alpha"} & set(fit.undetermined)
    assert np.all(np.abs(np.log(fit.predict(n, d) / loss)) < 0.01)  # the fit itself is fine where the data are


def test_all_equal_losses_put_the_law_on_the_edge_of_its_box():
    n, d = np.geomspace(1e7, 1e10, 6), np.geomspace(1e9, 1e12, 6)
    with pytest.warns(scaling.FitWarning) as caught:
        fit = scaling.fit_chinchilla(n, d, np.full(6, 3.0))
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("fit_chinchilla: the optimum lies on the edge of the parameter box") for m in messages)
    assert fit.at_bound and set(fit.at_bound) <= {"A", "B", "alpha", "beta"}
    for name in fit.at_bound:
        assert getattr(fit, name) == pytest.approx(scaling.BOX[name][0]) or getattr(fit, name) == pytest.approx(
            scaling.BOX[name][1]
        )
    assert fit.E == pytest.approx(3.0, rel=1e-6)


def test_every_free_parameter_stays_in_the_box():
    n, _, loss = synthetic(12, seed=4)
    with pytest.warns(scaling.FitWarning, match="not determined"):
        fit = scaling.fit_chinchilla(n[:6], np.full(6, 1e11), loss[:6])  # undetermined: B and beta wander
    for name in scaling.PARAMETERS:
        low, high = scaling.BOX[name]
        assert low * (1 - 1e-12) <= getattr(fit, name) <= high * (1 + 1e-12)


@pytest.mark.parametrize(
    ("n_values", "d_values", "expected"),
    [
        ((1e8, 1e9, 1e10), (1e10, 1e11, 1e12), ()),  # a 3 x 3 grid determines all five
        ((1e8, 1e9), (1e10, 1e11, 1e12), ("E", "A", "alpha")),  # two sizes: E + A/N^alpha seen at two N only
        ((1e8, 1e9, 1e10), (1e11,), ("E", "B", "beta")),  # one D: only E + B/D^beta
    ],
)
def test_undetermined_parameters_are_the_null_space_of_the_design(n_values, d_values, expected):
    n, d = (np.array(v, dtype=float).ravel() for v in np.meshgrid(n_values, d_values))
    objective = scaling.HuberObjective(n, d, scaling.chinchilla_loss(n, d, **TRUE), {}, 1e-3)
    theta = np.array([np.log(TRUE["E"]), np.log(TRUE["A"]), np.log(TRUE["B"]), TRUE["alpha"], TRUE["beta"]])
    assert scaling.undetermined_parameters(objective.jacobian(theta), list(scaling.PARAMETERS)) == expected


def test_jacobian_matches_finite_differences():
    n, d, loss = synthetic(8)
    objective = scaling.HuberObjective(n, d, loss, {"B": 410.7}, 1e-3)

    def log_law(free_values):
        e, a, b, alpha, beta = objective.full(free_values[None])[0]
        return np.log(scaling.chinchilla_loss(n, d, np.exp(e), np.exp(a), np.exp(b), alpha, beta))

    x = np.array([0.5, 6.0, 0.3, 0.3])
    numeric = np.stack([(log_law(x + step) - log_law(x - step)) / 2e-6 for step in np.eye(4) * 1e-6], axis=1)
    np.testing.assert_allclose(objective.jacobian(x), numeric, rtol=1e-5, atol=1e-9)
