"""The Chinchilla scaling law and its fit (Hoffmann et al. 2022, Approach 3), used in paper §3 and Figure 1b.

``L(N, D) = E + A / N**alpha + B / D**beta`` for N parameters trained on D tokens. The fit minimises, over
``theta = (a, b, e, alpha, beta)`` with ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, the *summed* Huber loss

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),    delta = 1e-3,

by L-BFGS from each point of a grid of 4,500 initialisations, keeping the best. Any subset of the five
parameters can be held fixed (the paper fits only A and alpha). All starts run as one batched L-BFGS in
NumPy: one array of shape (starts, free parameters), one vectorised objective, a per-start line search.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

PARAMETERS = ("E", "A", "B", "alpha", "beta")
#: How many of the best end points of the 4,500 starts are refined with a strict tolerance.
POLISHED_STARTS = 32
#: Internal coordinates, in the order of PARAMETERS: log E, log A, log B, alpha, beta.
_LOG_PARAMETERS = {"E", "A", "B"}


def chinchilla_loss(
    n_params: ArrayLike, n_tokens: ArrayLike, E: float, A: float, B: float, alpha: float, beta: float
) -> NDArray[np.float64]:
    """``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al. 2022, eq. 2), broadcast over N and D."""
    n = np.asarray(n_params, dtype=np.float64)
    d = np.asarray(n_tokens, dtype=np.float64)
    return E + A / n**alpha + B / d**beta


@dataclass(frozen=True)
class ChinchillaFit:
    """A fitted (or given) Chinchilla law.

    Attributes:
        E, A, B, alpha, beta: the law's constants.
        objective: the summed Huber loss at the optimum (NaN for constants that were not fitted).
        fixed: names of the parameters that were held fixed.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")
    fixed: tuple[str, ...] = ()

    def predict(self, n_params: ArrayLike, n_tokens: ArrayLike) -> NDArray[np.float64]:
        """Predicted loss for N parameters and D tokens (arrays broadcast)."""
        return chinchilla_loss(n_params, n_tokens, self.E, self.A, self.B, self.alpha, self.beta)


def _checked_data(
    n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    arrays = [np.asarray(x, dtype=np.float64).ravel() for x in (n_params, n_tokens, loss)]
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"n_params, n_tokens and loss must have the same length, got {[len(a) for a in arrays]}")
    if lengths == {0}:
        raise ValueError("no data points: pass at least one (n_params, n_tokens, loss) triple")
    for name, values in zip(("n_params", "n_tokens", "loss"), arrays, strict=True):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contains NaN or infinity: drop those points before fitting")
        if np.any(values <= 0):
            raise ValueError(f"{name} must be positive (the law is fitted in log space)")
    return arrays[0], arrays[1], arrays[2]


def _checked_fixed(fixed: Mapping[str, float] | None) -> dict[str, float]:
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"cannot fix {sorted(unknown)}: fixed accepts {list(PARAMETERS)}")
    for name, value in fixed.items():
        if not np.isfinite(value) or (name in _LOG_PARAMETERS and value <= 0):
            raise ValueError(
                f"fixed {name}={value!r} must be finite{' and positive' if name in _LOG_PARAMETERS else ''}"
            )
    if len(fixed) == len(PARAMETERS):
        raise ValueError("all five parameters are fixed: nothing to fit")
    return fixed


def initial_grid() -> NDArray[np.float64]:
    """The 4,500 starts of Hoffmann et al. (2022), columns (e, a, b, alpha, beta) in PARAMETERS order."""
    alphas = betas = np.arange(0.0, 2.0 + 1e-9, 0.5)
    es = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    abs_ = np.arange(0.0, 25.0 + 1e-9, 5.0)
    return np.array(list(itertools.product(es, abs_, abs_, alphas, betas)))


class HuberObjective:
    """The summed Huber loss of the law in log space and its gradient, for a batch of parameter vectors.

    Args:
        n_params, n_tokens, loss: the data, shape (n,).
        fixed: parameters held fixed (natural units, e.g. ``{"E": 1.69}``).
        delta: the Huber threshold.
    """

    def __init__(
        self,
        n_params: NDArray[np.float64],
        n_tokens: NDArray[np.float64],
        loss: NDArray[np.float64],
        fixed: Mapping[str, float],
        delta: float,
    ) -> None:
        self.log_n, self.log_d, self.log_loss = np.log(n_params), np.log(n_tokens), np.log(loss)
        self.delta = delta
        self.free = [i for i, name in enumerate(PARAMETERS) if name not in fixed]
        self.base = np.zeros(len(PARAMETERS))
        for i, name in enumerate(PARAMETERS):
            if name in fixed:
                self.base[i] = np.log(fixed[name]) if name in _LOG_PARAMETERS else fixed[name]

    def full(self, free_values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Complete (starts, 5) internal parameters from (starts, n_free) free ones."""
        theta = np.tile(self.base, (free_values.shape[0], 1))
        theta[:, self.free] = free_values
        return theta

    def __call__(self, free_values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Objective, shape (starts,), and gradient, shape (starts, n_free)."""
        theta = self.full(free_values)
        e, a, b, alpha, beta = (theta[:, i : i + 1] for i in range(5))
        terms = np.stack(
            [a - alpha * self.log_n, b - beta * self.log_d, np.broadcast_to(e, (theta.shape[0], self.log_n.size))]
        )  # (3, starts, n)
        peak = terms.max(axis=0)
        weights = np.exp(terms - peak)
        total = weights.sum(axis=0)
        residual = peak + np.log(total) - self.log_loss
        quadratic = np.abs(residual) <= self.delta
        value = np.where(quadratic, 0.5 * residual**2, self.delta * (np.abs(residual) - 0.5 * self.delta)).sum(axis=1)
        slope = np.where(quadratic, residual, self.delta * np.sign(residual))  # dHuber/dresidual
        soft = weights / total  # dLSE/dterm
        gradient = np.stack(
            [
                (slope * soft[2]).sum(axis=1),  # e
                (slope * soft[0]).sum(axis=1),  # a
                (slope * soft[1]).sum(axis=1),  # b
                -(slope * soft[0] * self.log_n).sum(axis=1),  # alpha
                -(slope * soft[1] * self.log_d).sum(axis=1),  # beta
            ],
            axis=1,
        )
        return value, gradient[:, self.free]


def batched_lbfgs(
    objective: HuberObjective,
    x0: NDArray[np.float64],
    max_iter: int = 1000,
    history: int = 10,
    gtol: float = 1e-9,
    ftol: float = 2.22e-9,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Minimise independent problems, one per row of ``x0``, with L-BFGS and an Armijo backtracking search.

    Each row keeps its own curvature history (``history`` pairs) and step; a row stops once its gradient's
    max-norm falls below ``gtol``, an accepted step improves its objective by less than ``ftol`` (relative to
    ``max(|f|, 1)``, scipy's L-BFGS-B criterion and default),
    or no step along its direction decreases the objective. Work is done on the rows still running only.

    Returns:
        The minimisers, shape like ``x0``, and the objective at each, shape (starts,).
    """
    x = np.array(x0, dtype=np.float64)
    starts, dim = x.shape
    f, g = objective(x)
    s_hist = np.zeros((starts, history, dim))
    y_hist = np.zeros((starts, history, dim))
    rho = np.zeros((starts, history))  # 0 marks an empty slot: it then contributes nothing
    scale = np.ones(starts)  # initial inverse Hessian s'y / y'y of the newest accepted pair
    first = np.ones(starts, dtype=bool)
    active = np.abs(g).max(axis=1) > gtol
    for iteration in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xa, fa, ga = x[rows], f[rows], g[rows]
        sa, ya, rhoa = s_hist[rows], y_hist[rows], rho[rows]
        # Two-loop recursion, vectorised over rows, newest pair first.
        order = [(iteration - 1 - k) % history for k in range(history)]
        q = ga.copy()
        alphas = np.zeros((rows.size, history))
        for slot in order:
            alphas[:, slot] = rhoa[:, slot] * np.einsum("sd,sd->s", sa[:, slot], q)
            q -= alphas[:, slot, None] * ya[:, slot]
        r = scale[rows, None] * q
        for slot in reversed(order):
            beta = rhoa[:, slot] * np.einsum("sd,sd->s", ya[:, slot], r)
            r += (alphas[:, slot] - beta)[:, None] * sa[:, slot]
        direction = -r
        slope = np.einsum("sd,sd->s", ga, direction)
        uphill = slope >= 0
        direction[uphill] = -ga[uphill]
        slope[uphill] = -np.einsum("sd,sd->s", ga[uphill], ga[uphill])
        # Armijo backtracking (c1 = 1e-4); the very first step is scaled to the gradient's size.
        step = np.where(first[rows], 1.0 / np.maximum(np.abs(ga).sum(axis=1), 1.0), 1.0)
        new_x, new_f, new_g = xa.copy(), fa.copy(), ga.copy()
        searching = np.ones(rows.size, dtype=bool)
        for _ in range(50):
            pending = np.flatnonzero(searching)
            if pending.size == 0:
                break
            trial = xa[pending] + step[pending, None] * direction[pending]
            trial_f, trial_g = objective(trial)
            accept = np.isfinite(trial_f) & (trial_f <= fa[pending] + 1e-4 * step[pending] * slope[pending])
            done = pending[accept]
            new_x[done], new_f[done], new_g[done] = trial[accept], trial_f[accept], trial_g[accept]
            searching[done] = False
            step[pending[~accept]] *= 0.5
        moved = ~searching
        s_new, y_new = new_x - xa, new_g - ga
        sy = np.einsum("sd,sd->s", s_new, y_new)
        yy = np.einsum("sd,sd->s", y_new, y_new)
        keep = moved & (sy > 1e-12)  # curvature condition keeps the inverse Hessian positive definite
        slot = iteration % history
        sa[:, slot] = np.where(keep[:, None], s_new, 0.0)
        ya[:, slot] = np.where(keep[:, None], y_new, 0.0)
        rhoa[:, slot] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        s_hist[rows], y_hist[rows], rho[rows] = sa, ya, rhoa
        scale[rows] = np.where(keep & (yy > 0), sy / np.where(yy > 0, yy, 1.0), scale[rows])
        first[rows] = False
        improvement = (fa - new_f) / np.maximum(np.maximum(np.abs(fa), np.abs(new_f)), 1.0)  # as scipy
        x[rows], f[rows], g[rows] = new_x, new_f, new_g
        still = moved & (improvement >= ftol) & (np.abs(new_g).max(axis=1) > gtol)
        active[rows] = still
    return x, f


def fit_chinchilla(
    n_params: ArrayLike,
    n_tokens: ArrayLike,
    loss: ArrayLike,
    *,
    fixed: Mapping[str, float] | None = None,
    delta: float = 1e-3,
) -> ChinchillaFit:
    """Fit the Chinchilla law as in Hoffmann et al. (2022, Approach 3), from all 4,500 grid starts at once.

    Args:
        n_params, n_tokens, loss: shape (n,), positive and finite.
        fixed: any of ``"E", "A", "B", "alpha", "beta"`` held at the given values (natural units). The paper
            (§3) fits only A and alpha, with ``{"E": 1.69, "B": 410.7, "beta": 0.28}``.
        delta: Huber threshold; a large delta makes the objective half the sum of squared log residuals.

    Returns:
        The best fit over all starts.
    """
    n, d, y = _checked_data(n_params, n_tokens, loss)
    fixed_values = _checked_fixed(fixed)
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    objective = HuberObjective(n, d, y, fixed_values, delta)
    starts = np.unique(initial_grid()[:, objective.free], axis=0)
    x, f = batched_lbfgs(objective, starts)
    # Polish the most promising end points with a strict tolerance: cheap, and the loose per-start stopping
    # rule (scipy's default) can leave the winner a hair above its minimum.
    promising = np.argsort(np.where(np.isfinite(f), f, np.inf))[:POLISHED_STARTS]
    x, f = batched_lbfgs(objective, x[promising], max_iter=5000, ftol=1e-15)
    best = int(np.nanargmin(f))
    theta = objective.full(x[best : best + 1])[0]
    e, a, b, alpha, beta = theta
    return ChinchillaFit(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
        objective=float(f[best]),
        fixed=tuple(name for name in PARAMETERS if name in fixed_values),
    )


def relative_gap(actual: ArrayLike, predicted: ArrayLike) -> NDArray[np.float64]:
    """How much worse than predicted, as a fraction: ``(actual - predicted) / predicted`` (paper §3's 8%)."""
    actual_values = np.asarray(actual, dtype=np.float64)
    predicted_values = np.asarray(predicted, dtype=np.float64)
    return (actual_values - predicted_values) / predicted_values
