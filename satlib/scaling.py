"""The Chinchilla scaling law and its fit (Hoffmann et al. 2022, Approach 3), used in paper §3 and Figure 1b.

``L(N, D) = E + A / N**alpha + B / D**beta`` for N parameters trained on D tokens. The fit minimises, over
``theta = (a, b, e, alpha, beta)`` with ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)``, the *summed* Huber loss

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),    delta = 1e-3,

by L-BFGS from each of 4,500 initialisations (all at once, :func:`satlib.optimize.batched_lbfgs`), keeping the
best, inside the box :data:`BOX`. Any subset of the five parameters can be held fixed (the paper fits A, alpha).

What the data can determine (:func:`fit_chinchilla` checks it; ``k_N``, ``k_D``: the numbers of distinct N and D):

* **Refused** (:class:`~satlib.errors.FitError`): fewer distinct (N, D) points than free parameters; or no side of
  the law can be determined. A side (the N side ``A / N**alpha``, the D side ``B / D**beta``) with ``f`` free
  parameters needs ``f`` distinct values of its variable, plus one when E is free (its term is told apart from the
  constant E only by how it varies): free ``A, alpha`` need ``k_N >= 2``, free ``E, A, alpha`` need
  ``k_N >= 3``, free ``alpha`` alone ``k_N >= 1``. The fit is refused when every side with free parameters has
  fewer distinct values than it needs. Also refused: inputs that are not positive and finite, a ``delta`` that is
  not a positive finite number, and losses at or below the law's fixed floor (a fixed E, plus a side whose
  constants are both fixed), which no positive A, B can reach.
* **Warned** (:class:`FitWarning`, and listed in :attr:`ChinchillaFit.undetermined`): free parameters that a change
  along some direction leaves every prediction unchanged to first order, i.e. in the null space of the Jacobian of
  the log-law at the optimum over the data points (or whose term has vanished there). With every point at one D
  and all five free (chapter 01's exercise), only ``E + B/D**beta`` is determined: B and beta are listed, and E too
  unless the D term has vanished on an edge of the box; with E, B and beta fixed (the paper's fit of A and alpha,
  §3) nothing is.
* **Warned** (and listed in :attr:`ChinchillaFit.at_bound`): free parameters whose optimum lies on the edge of
  :data:`BOX` (for example A at its lower edge when the loss does not fall with N).
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from satlib.errors import FitError
from satlib.optimize import batched_lbfgs, undetermined_parameters

PARAMETERS = ("E", "A", "B", "alpha", "beta")
#: How many of the best end points of the 4,500 starts are refined with a strict tolerance.
POLISHED_STARTS = 32
#: Internal coordinates, in the order of PARAMETERS: log E, log A, log B, alpha, beta.
_LOG_PARAMETERS = {"E", "A", "B"}
#: The box every free parameter is fitted in (natural units, inclusive). Wide enough for every published fit
#: (Kaplan et al. 2020, Hoffmann et al. 2022, Besiroglu et al. 2024: exponents 0.07 to 0.4, A and B 10 to 3e3)
#: and for losses in nats; it contains Hoffmann's grid of starts and stops the runaway of degenerate fits (an
#: exponent of 1,000 that makes a term vanish, E of 1e-25). An optimum on its edge is reported, not hidden.
BOX: dict[str, tuple[float, float]] = {
    "E": (1e-3, 1e2),
    "A": (1e-4, 1e40),
    "B": (1e-4, 1e40),
    "alpha": (0.0, 3.0),
    "beta": (0.0, 3.0),
}
#: Free parameters of each side of the law, and the variable that side varies with.
_SIDES = {"N": ("A", "alpha"), "D": ("B", "beta")}
#: Relative size below which a singular value of the column-normalised Jacobian counts as zero.
_RANK_TOLERANCE = 1e-8
#: Distance (internal coordinates) within which a parameter counts as on the edge of the box.
_BOUND_TOLERANCE = 1e-6


class FitWarning(UserWarning):
    """A fit that succeeded but that the data do not fully support (undetermined parameters, an edge of the box)."""


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
        at_bound: free parameters whose optimum lies on an edge of :data:`BOX`.
        undetermined: free parameters the data do not determine (see the module's docstring).
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")
    fixed: tuple[str, ...] = ()
    at_bound: tuple[str, ...] = ()
    undetermined: tuple[str, ...] = ()

    def predict(self, n_params: ArrayLike, n_tokens: ArrayLike) -> NDArray[np.float64]:
        """Predicted loss for N parameters and D tokens (arrays broadcast)."""
        return chinchilla_loss(n_params, n_tokens, self.E, self.A, self.B, self.alpha, self.beta)


def _checked_data(
    n_params: ArrayLike, n_tokens: ArrayLike, loss: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    arrays = [np.asarray(x, dtype=np.float64).ravel() for x in (n_params, n_tokens, loss)]
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise FitError(
            f"n_params, n_tokens and loss must have the same length, got {[len(a) for a in arrays]}: "
            "pass one loss per (N, D) point"
        )
    if lengths == {0}:
        raise FitError("no data points: pass at least one (n_params, n_tokens, loss) triple")
    for name, values in zip(("n_params", "n_tokens", "loss"), arrays, strict=True):
        if not np.all(np.isfinite(values)):
            index = int(np.flatnonzero(~np.isfinite(values))[0])
            raise FitError(f"{name} contains NaN or infinity (at index {index}): drop those points before fitting")
        if np.any(values <= 0):
            index = int(np.flatnonzero(values <= 0)[0])
            raise FitError(
                f"{name} must be positive (the law is fitted in log space), got {values[index]:g} at index {index}: "
                "drop that point"
            )
    return arrays[0], arrays[1], arrays[2]


def _checked_fixed(fixed: Mapping[str, float] | None) -> dict[str, float]:
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(PARAMETERS)
    if unknown:
        raise FitError(f"cannot fix {sorted(unknown)}: fixed accepts {list(PARAMETERS)}")
    for name, value in fixed.items():
        if not isinstance(value, numbers.Real) or not np.isfinite(value) or (name in _LOG_PARAMETERS and value <= 0):
            raise FitError(
                f"fixed {name}={value!r} must be a finite number{' and positive' if name in _LOG_PARAMETERS else ''}"
            )
    if len(fixed) == len(PARAMETERS):
        raise FitError("all five parameters are fixed: nothing to fit (use chinchilla_loss to evaluate the law)")
    return {name: float(value) for name, value in fixed.items()}


def _checked_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not math.isfinite(delta) or delta <= 0:
        raise FitError(
            f"delta must be a positive finite number (the Huber threshold; Hoffmann et al. use 1e-3), got {delta!r}"
        )
    return float(delta)


def _check_determinable(n: NDArray[np.float64], d: NDArray[np.float64], free: tuple[str, ...]) -> None:
    """Refuse data that cannot determine the free parameters (the rules of the module's docstring)."""
    points = len(np.unique(np.stack([n, d], axis=1), axis=0))
    if points < len(free):
        raise FitError(
            f"{points} distinct (N, D) point{'s' if points != 1 else ''} cannot determine {len(free)} free "
            f"parameters ({', '.join(free)}): add points or hold some fixed with fixed={{...}}"
        )
    distinct = {"N": len(np.unique(n)), "D": len(np.unique(d))}
    needs: dict[str, tuple[list[str], int]] = {}
    for side, names in _SIDES.items():
        side_free = [name for name in names if name in free]
        if side_free:
            needs[side] = (side_free, len(side_free) + ("E" in free))
    if needs and all(distinct[side] < need for side, (_, need) in needs.items()):
        parts = [
            f"free {', '.join(names + (['E'] if 'E' in free else []))} need {need} distinct {side}, "
            f"the data have {distinct[side]}"
            for side, (names, need) in needs.items()
        ]
        raise FitError(
            f"the data determine no side of the law ({'; '.join(parts)}): add points with other N or D, "
            "or hold parameters fixed"
        )


def _check_floor(
    n: NDArray[np.float64], d: NDArray[np.float64], loss: NDArray[np.float64], fixed: Mapping[str, float]
) -> None:
    """Refuse losses at or below a fixed E, or below what the fixed part of the law already predicts (a side whose
    constant and exponent are both fixed): positive A and B only add to it."""
    floors = []
    if "E" in fixed:
        floors.append(("the fixed E", np.full_like(loss, fixed["E"])))
    floor = np.full_like(loss, fixed.get("E", 0.0))
    parts = ["E"] if "E" in fixed else []
    for (constant, exponent), variable in ((_SIDES["N"], n), (_SIDES["D"], d)):
        if constant in fixed and exponent in fixed:
            floor = floor + fixed[constant] / variable ** fixed[exponent]
            parts.append(f"{constant}/{'N' if variable is n else 'D'}^{exponent}")
    if len(parts) > 1 or (parts and "E" not in fixed):
        floors.append((f"the law's fixed part {' + '.join(parts)}", floor))
    for what, values in floors:
        below = np.flatnonzero(loss <= values)
        if below.size:
            i = int(below[0])
            raise FitError(
                f"loss {loss[i]:.6g} at N={n[i]:.4g}, D={d[i]:.4g} is at or below {what} = {values[i]:.6g} "
                f"({below.size} of {loss.size} losses are), which no positive A, B can reach: "
                "lower the fixed constants or free them"
            )


def box(free: list[int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper edges of :data:`BOX` in internal coordinates, for the free parameters (indices)."""
    edges = np.array(
        [[np.log(BOX[name][k]) if name in _LOG_PARAMETERS else BOX[name][k] for k in (0, 1)] for name in PARAMETERS]
    )
    return edges[free, 0], edges[free, 1]


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

    def _shares(self, free_values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Log-law ``LSE(a - alpha log N, b - beta log D, e)``, shape (starts, n), and each term's share of the law
        (dLSE/dterm), shape (3, starts, n): the N term, the D term, E."""
        theta = self.full(free_values)
        e, a, b, alpha, beta = (theta[:, i : i + 1] for i in range(5))
        terms = np.stack(
            [a - alpha * self.log_n, b - beta * self.log_d, np.broadcast_to(e, (theta.shape[0], self.log_n.size))]
        )  # (3, starts, n)
        peak = terms.max(axis=0)
        weights = np.exp(terms - peak)
        total = weights.sum(axis=0)
        return peak + np.log(total), weights / total

    def __call__(self, free_values: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Objective, shape (starts,), and gradient, shape (starts, n_free)."""
        log_law, soft = self._shares(free_values)
        residual = log_law - self.log_loss
        quadratic = np.abs(residual) <= self.delta
        value = np.where(quadratic, 0.5 * residual**2, self.delta * (np.abs(residual) - 0.5 * self.delta)).sum(axis=1)
        slope = np.where(quadratic, residual, self.delta * np.sign(residual))  # dHuber/dresidual
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

    def jacobian(self, free_values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Derivatives of the log-law at each data point with respect to the free internal parameters, shape
        (n, n_free), at one parameter vector of shape (n_free,)."""
        _, soft = self._shares(free_values[None, :])
        soft = soft[:, 0]  # (3, n)
        columns = np.stack([soft[2], soft[0], soft[1], -soft[0] * self.log_n, -soft[1] * self.log_d], axis=1)
        return columns[:, self.free]


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
        The best fit over all starts, inside :data:`BOX`, with the free parameters that lie on an edge of the box
        (``at_bound``) and those the data do not determine (``undetermined``); each non-empty list is also warned
        (:class:`FitWarning`, one line).

    Raises:
        FitError: data that cannot determine the fit, or bad input (the rules of the module's docstring).
    """
    n, d, y = _checked_data(n_params, n_tokens, loss)
    fixed_values = _checked_fixed(fixed)
    delta = _checked_delta(delta)
    free_names = tuple(name for name in PARAMETERS if name not in fixed_values)
    _check_determinable(n, d, free_names)
    _check_floor(n, d, y, fixed_values)
    objective = HuberObjective(n, d, y, fixed_values, delta)
    lower, upper = box(objective.free)
    starts = np.unique(initial_grid()[:, objective.free], axis=0)
    x, f = batched_lbfgs(objective, starts, lower=lower, upper=upper)
    # Polish the most promising end points with a strict tolerance: cheap, and the loose per-start stopping
    # rule (scipy's default) can leave the winner a hair above its minimum.
    promising = np.argsort(np.where(np.isfinite(f), f, np.inf))[:POLISHED_STARTS]
    x, f = batched_lbfgs(objective, x[promising], max_iter=5000, ftol=1e-15, lower=lower, upper=upper)
    best = int(np.nanargmin(f))
    theta = objective.full(x[best : best + 1])[0]
    e, a, b, alpha, beta = theta
    at_bound = tuple(
        free_names[k]
        for k, value in enumerate(x[best])
        if value - lower[k] <= _BOUND_TOLERANCE or upper[k] - value <= _BOUND_TOLERANCE
    )
    undetermined = undetermined_parameters(objective.jacobian(x[best]), list(free_names))
    fit = ChinchillaFit(
        E=float(np.exp(e)),
        A=float(np.exp(a)),
        B=float(np.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
        objective=float(f[best]),
        fixed=tuple(name for name in PARAMETERS if name in fixed_values),
        at_bound=at_bound,
        undetermined=undetermined,
    )
    if undetermined:
        warnings.warn(_undetermined_message(undetermined, n, d), FitWarning, stacklevel=2)
    if at_bound:
        edges = []
        for name in at_bound:
            value = getattr(fit, name)
            low_edge, high_edge = BOX[name]
            side = "lower" if abs(value - low_edge) <= abs(value - high_edge) else "upper"
            edges.append(f"{name} = {value:.4g} on its {side} edge")
        warnings.warn(
            f"fit_chinchilla: the optimum lies on the edge of the parameter box (satlib.scaling.BOX): "
            f"{', '.join(edges)}; the data push the law to an extreme: check them or hold these parameters fixed",
            FitWarning,
            stacklevel=2,
        )
    return fit


def _undetermined_message(names: tuple[str, ...], n: NDArray[np.float64], d: NDArray[np.float64]) -> str:
    hints = []
    if len(np.unique(d)) == 1 and {"B", "beta"} & set(names):
        hints.append(f"every point has D = {d[0]:.4g}, so only E + B/D^beta is determined")
    if len(np.unique(n)) == 1 and {"A", "alpha"} & set(names):
        hints.append(f"every point has N = {n[0]:.4g}, so only E + A/N^alpha is determined")
    because = f" ({'; '.join(hints)})" if hints else ""
    return (
        f"fit_chinchilla: {', '.join(names)} {'is' if len(names) == 1 else 'are'} not determined by the data"
        f"{because}: other values fit as well; hold them fixed (fixed={{...}}) or add points with other N and D"
    )


def relative_gap(actual: ArrayLike, predicted: ArrayLike) -> NDArray[np.float64]:
    """How much worse than predicted, as a fraction: ``(actual - predicted) / predicted`` (paper §3's 8%)."""
    actual_values = np.asarray(actual, dtype=np.float64)
    predicted_values = np.asarray(predicted, dtype=np.float64)
    return (actual_values - predicted_values) / predicted_values


def log_residuals(
    fit: ChinchillaFit, n_params: ArrayLike, n_tokens: ArrayLike, losses: ArrayLike
) -> NDArray[np.float64]:
    """``log L_predicted - log L`` per point: what the Huber loss of the fit sees (|r| <= delta is its quadratic
    part, beyond it the linear one)."""
    return np.log(fit.predict(n_params, n_tokens)) - np.log(np.asarray(losses, dtype=np.float64))
