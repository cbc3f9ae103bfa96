"""Batched optimisation for small fits: box-projected L-BFGS over many starts at once, and which parameters the data
leave undetermined (methods layer; used by :mod:`satlib.scaling` for the Chinchilla fit of paper §3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

#: Values and gradients of a batch of problems: rows of x (starts, dim) -> f (starts,), gradient (starts, dim).
BatchedObjective = Callable[[NDArray[np.float64]], tuple[NDArray[np.float64], NDArray[np.float64]]]

#: Relative size below which a singular value of the column-normalised Jacobian counts as zero.
_RANK_TOLERANCE = 1e-8


def undetermined_parameters(jacobian: NDArray[np.float64], names: list[str]) -> tuple[str, ...]:
    """Names of the columns of ``jacobian`` (n, k) that take part in its null space: moving those parameters together
    along some direction leaves every prediction unchanged to first order. Columns are normalised first, so the
    test does not depend on the parameters' units; a column that vanishes counts as undetermined."""
    norms = np.linalg.norm(jacobian, axis=0)
    vanished = norms <= 1e-12 * max(norms.max(), np.finfo(np.float64).tiny)
    kept = np.flatnonzero(~vanished)
    undetermined = set(np.flatnonzero(vanished).tolist())
    if kept.size:
        _, singular, right = np.linalg.svd(jacobian[:, kept] / norms[kept], full_matrices=True)
        rank = int(np.sum(singular > _RANK_TOLERANCE * singular[0]))
        null_space = right[rank:]  # (kept - rank, kept)
        undetermined |= set(kept[np.linalg.norm(null_space, axis=0) > 1e-3].tolist())
    return tuple(names[i] for i in sorted(undetermined))


def batched_lbfgs(
    objective: BatchedObjective,
    x0: NDArray[np.float64],
    max_iter: int = 1000,
    history: int = 10,
    gtol: float = 1e-9,
    ftol: float = 2.22e-9,
    lower: NDArray[np.float64] | None = None,
    upper: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Minimise independent problems, one per row of ``x0``, with L-BFGS and an Armijo backtracking search,
    inside the box ``[lower, upper]`` (shape (dim,); ``None``: unbounded).

    Each row keeps its own curvature history (``history`` pairs) and step; a row stops once its projected
    gradient's max-norm falls below ``gtol``, an accepted step improves its objective by less than ``ftol``
    (relative to ``max(|f|, 1)``, scipy's L-BFGS-B criterion and default), or no step along its direction decreases
    the objective. The box is kept by projection: a coordinate on an edge whose gradient pushes it out is held
    there for the step, and trial points are clipped into the box. Work is done on the rows still running only.

    Returns:
        The minimisers, shape like ``x0``, and the objective at each, shape (starts,).
    """
    starts, dim = np.shape(x0)
    low = np.full(dim, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    high = np.full(dim, np.inf) if upper is None else np.asarray(upper, dtype=np.float64)
    x = np.clip(np.array(x0, dtype=np.float64), low, high)
    f, g = objective(x)
    s_hist = np.zeros((starts, history, dim))
    y_hist = np.zeros((starts, history, dim))
    rho = np.zeros((starts, history))  # 0 marks an empty slot: it then contributes nothing
    scale = np.ones(starts)  # initial inverse Hessian s'y / y'y of the newest accepted pair
    first = np.ones(starts, dtype=bool)

    def held(point: NDArray[np.float64], push: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Coordinates on an edge that ``push`` (a descent direction) would move out of the box."""
        return ((point <= low) & (push < 0)) | ((point >= high) & (push > 0))

    active = np.abs(np.where(held(x, -g), 0.0, g)).max(axis=1) > gtol
    for iteration in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        xa, fa, ga = x[rows], f[rows], g[rows]
        sa, ya, rhoa = s_hist[rows], y_hist[rows], rho[rows]
        free_gradient = np.where(held(xa, -ga), 0.0, ga)
        # Two-loop recursion, vectorised over rows, newest pair first.
        order = [(iteration - 1 - k) % history for k in range(history)]
        q = free_gradient.copy()
        alphas = np.zeros((rows.size, history))
        for slot in order:
            alphas[:, slot] = rhoa[:, slot] * np.einsum("sd,sd->s", sa[:, slot], q)
            q -= alphas[:, slot, None] * ya[:, slot]
        r = scale[rows, None] * q
        for slot in reversed(order):
            beta = rhoa[:, slot] * np.einsum("sd,sd->s", ya[:, slot], r)
            r += (alphas[:, slot] - beta)[:, None] * sa[:, slot]
        direction = np.where(held(xa, -ga) | held(xa, -r), 0.0, -r)
        slope = np.einsum("sd,sd->s", ga, direction)
        uphill = slope >= 0
        direction[uphill] = -free_gradient[uphill]
        slope[uphill] = -np.einsum("sd,sd->s", free_gradient[uphill], free_gradient[uphill])
        # Armijo backtracking (c1 = 1e-4) along the projected path; the very first step is scaled to the
        # gradient's size.
        step = np.where(first[rows], 1.0 / np.maximum(np.abs(free_gradient).sum(axis=1), 1.0), 1.0)
        new_x, new_f, new_g = xa.copy(), fa.copy(), ga.copy()
        searching = slope < 0
        for _ in range(50):
            pending = np.flatnonzero(searching)
            if pending.size == 0:
                break
            trial = np.clip(xa[pending] + step[pending, None] * direction[pending], low, high)
            trial_f, trial_g = objective(trial)
            decrease = np.einsum("sd,sd->s", ga[pending], trial - xa[pending])
            accept = np.isfinite(trial_f) & (trial_f <= fa[pending] + 1e-4 * decrease) & (decrease < 0)
            done = pending[accept]
            new_x[done], new_f[done], new_g[done] = trial[accept], trial_f[accept], trial_g[accept]
            searching[done] = False
            step[pending[~accept]] *= 0.5
        moved = ~searching & np.any(new_x != xa, axis=1)
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
        projected = np.where(held(new_x, -new_g), 0.0, new_g)
        still = moved & (improvement >= ftol) & (np.abs(projected).max(axis=1) > gtol)
        active[rows] = still
    return x, f
