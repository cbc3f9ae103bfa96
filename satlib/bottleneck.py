"""The bottleneck floor: the lowest expected cross-entropy a width-d softmax head can reach on exactly known
next-token distributions (methods layer; paper §5.2, made exact).

Given a first-order source (next-token distributions P[c] after each context c, and the stationary distribution pi
of contexts), :class:`BottleneckFloors` fits the best rank-d log-linear model ``Z = A B^T + 1 b^T`` to the exact
distributions and reports its loss. It equals the entropy rate once d reaches the rank of the source's
log-probabilities, and the gap between the two is the price of the bottleneck. :mod:`satlib.synthetic` builds such
sources; :mod:`satlib.controlled` trains students against these floors.
"""

from __future__ import annotations

import itertools
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.optimize
from numpy.typing import NDArray

from satlib.errors import ConfigurationError, FitError

#: Factors of a width-d model: A (V, d), B (V, d) and b (V,).
Factors = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]

#: The bottleneck fit: L-BFGS stops when the relative decrease of the loss falls below FIT_FTOL or the largest
#: preconditioned gradient entry below FIT_GTOL; a fit that stops with a larger gradient than FIT_MAX_GRADIENT (or
#: on FIT_MAX_ITERATIONS) has not converged.
FIT_FTOL, FIT_GTOL, FIT_MAX_GRADIENT, FIT_MAX_ITERATIONS = 1e-15, 1e-10, 1e-6, 20_000


def integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, or a one-line :class:`ConfigurationError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}: pass an int >= {minimum}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True, eq=False)
class BottleneckFit:
    """The best width-d log-linear model of the language: logits ``Z = A B^T + 1 b^T`` (see ``best_rank_fit``).

    Attributes:
        d: the width.
        loss: expected cross-entropy ``sum_c pi_c CE(P[c], softmax(Z_c))`` in nats at the optimum found.
        contexts: A, shape (V, d): one d-dimensional vector per context (previous token).
        head: B, shape (V, d): the output embedding of each next token.
        bias: b, shape (V,): a free per-token bias.
        start: the start L-BFGS reached this optimum from (see ``SyntheticLanguage.best_rank_fit``).
        start_losses: the loss reached from each start tried, by start.
        iterations, evaluations: L-BFGS iterations and loss evaluations of the winning start.
        max_gradient: largest entry of the (preconditioned) gradient at the end, winning start.
        converged: whether L-BFGS stopped on its tolerances (not its iteration limit) with max_gradient at most
            ``FIT_MAX_GRADIENT``.
        seconds: wall time of the fits from all starts at this width (not those of narrower widths).
    """

    d: int
    loss: float
    contexts: NDArray[np.float64]
    head: NDArray[np.float64]
    bias: NDArray[np.float64]
    start: str
    start_losses: dict[str, float]
    iterations: int
    evaluations: int
    max_gradient: float
    converged: bool
    seconds: float


@dataclass(eq=False)
class BottleneckFloors:
    """The floors of one source: its log-probabilities (V, V), probabilities, stationary distribution and rank.

    Fits are cached per width on the instance.
    """

    _log_probs: NDArray[np.float64]
    _probs: NDArray[np.float64]
    _stationary: NDArray[np.float64]
    rank: int
    _fits: dict[int, BottleneckFit] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self._probs.shape[0]

    def entropy_rate(self) -> float:
        """``sum_c pi_c H(P[c])``: the loss of the true distribution."""
        return float(-self._stationary @ np.sum(self._probs * self._log_probs, axis=1))

    def unigram_entropy(self) -> float:
        """H(pi): the loss of the best context-free model."""
        pi = self._stationary[self._stationary > 0]
        return float(-pi @ np.log(pi))

    def best_rank_fit(self, d: int) -> BottleneckFit:
        """The best width-d log-linear model of the language found, and its loss: the floor of a width-d head.

        Minimises the exact expected cross-entropy ``sum_c pi_c CE(P[c], softmax(Z_c))`` over logits
        ``Z = A B^T + 1 b^T`` (A, B: (V, d), b: (V,)) with L-BFGS in float64 (scipy), each variable scaled by
        ``(V pi)^(-1/2)`` of its token (a diagonal preconditioner: the curvature along row c of A, and along row y
        of B and b, is proportional to pi_c and pi_y).

        The problem is not convex and has local minima (the starts below disagree by up to 0.08 nats in small sharp
        worlds, up to 1.5e-3 nats at V = 1,024 and the trial's scale, and agree to 1e-13 in most cases there), so
        L-BFGS runs from up to three starts and the lowest loss is kept (all are in ``start_losses``):
            - ``"svd"``: the truncated SVD of ``centred_log_probs`` (and b the column means of the row-centred
              log-probabilities). Once d >= rank it is exact, so the floor equals ``entropy_rate``, and it is the
              only start;
            - ``"weighted svd"``: the truncated SVD of ``sqrt(pi_c) M[c, y] sqrt(pi_y)``, M the log-probabilities
              centred with pi-weighted column means (the second-order expansion of the loss weighs errors so);
            - ``"width <d // 2>"``: the optimum at width d // 2, plus d - d // 2 columns along the top singular
              vectors of the (preconditioned) gradient, scaled by an exact line search. Its loss starts below the
              narrower floor, so the floors at 1, 2, 4, 8, ... are non-increasing by construction.
        Whichever start wins, the result bounds the true floor from above; ``floor_table`` checks the floors it
        reports are non-increasing, and the tests compare with gradient descent from random starts. Cached per d
        on the instance.

        Why a GPT-NeoX student of width d cannot go below the floor (in expectation): its logits are ``W h`` with W
        the (V, d) output embedding and h the final layer norm's output ``g * n + beta`` (n normalised). Every logit
        vector lies in W's column space (rank <= d); the layer norm's bias contributes ``W beta``, a vector of that
        same space. That is the class ``A B^T`` with B = W, inside ``A B^T + 1 b^T``: a free bias only enlarges the
        class, so its minimum is a valid lower bound. The student reads the whole window, not the previous token
        alone, but the next token depends on the previous token only: for any history ending in c, its loss
        ``CE(P[c], softmax(W h))`` is at least ``min_a CE(P[c], softmax(W a + b))``, the term row c of A attains.
        The windows' previous tokens are distributed as pi, hence the weights pi_c. (A finite held-out sample can
        fall below the floor by its sampling error.)
        """
        d = integer("d", d, 1)
        if d not in self._fits:
            starts = {"svd": self._svd_start(d, weighted=False)}
            if d < self.rank:
                starts["weighted svd"] = self._svd_start(d, weighted=True)
                if d >= 2:
                    starts[f"width {d // 2}"] = self._widened_start(self.best_rank_fit(d // 2), d)
            fits = [self._fit(d, point, name) for name, point in starts.items()]
            best = min(fits, key=lambda fit: fit.loss)
            if not best.converged:  # a valid upper bound, but maybe far from the optimum it was heading to
                raise FitError(
                    f"the width-{d} floor (best from the {best.start} start) did not converge: largest gradient "
                    f"{best.max_gradient:.1e} after {best.iterations} iterations; report this configuration"
                )
            self._fits[d] = replace(
                best, start_losses={fit.start: fit.loss for fit in fits}, seconds=sum(fit.seconds for fit in fits)
            )
        return self._fits[d]

    def best_rank_loss(self, d: int) -> float:
        """The bottleneck floor of width d in nats: ``best_rank_fit(d).loss``."""
        return self.best_rank_fit(d).loss

    def layer_norm_loss(self, d: int) -> float:
        """The floor of the class a width-d GPT-NeoX student really belongs to: rank d - 1 plus a free bias, i.e.
        ``best_rank_loss(d - 1)`` (the unigram entropy at d = 1).

        The final layer norm's output is ``g * n + beta`` with n = (x - mean x) / sqrt(var x + eps): n has mean
        zero, so ``g * n`` lies in diag(g) applied to the mean-zero hyperplane, a subspace of dimension at most
        d - 1, and the logits ``W (g * n + beta)`` are a rank-(d - 1) function of the context plus the constant
        ``W beta``, a bias in W's span. So the class lies inside rank d - 1 plus a free bias: this loss is a floor.
        It is also reached: ``||n||^2 = d var / (var + eps)`` takes any value below d (eps > 0), and W is free, so
        with g = 1, beta along the ones and W = [B P^T / s, b] (P a basis of the hyperplane, s a scale that keeps
        every n_c inside the ball) a student reproduces any rank-(d - 1) model ``A B^T + 1 b^T`` exactly (the tests
        build one). A tighter floor than ``best_rank_loss(d)``, and as valid; a student reaches it only with
        pre-norm states whose variance is near eps for some contexts, so students on the norm's sphere may stay
        above it.
        """
        d = integer("d", d, 1)
        return self.unigram_entropy() if d == 1 else self.best_rank_fit(d - 1).loss

    def floor_table(self, widths: list[int], layer_norm: bool = False) -> pd.DataFrame:
        """The bottleneck floor for each width, one row per width in increasing order.

        Columns: ``d``, ``floor`` (``best_rank_loss``), ``entropy_rate``, ``price`` (floor - entropy rate: the
        excess loss a width-d head pays on this language however long it trains), ``unigram_entropy``; with
        ``layer_norm``, also ``floor_layer_norm`` (:meth:`layer_norm_loss`, one more fit per width).

        Raises:
            FitError: a wider floor above a narrower one by more than 1e-9 nats (a local optimum was kept: the
                floors cannot be trusted).
        """
        ds = sorted({integer("width", d, 1) for d in widths})
        fitted = sorted({*ds, *(d - 1 for d in ds if layer_norm and d > 1)})
        floors = [self.best_rank_fit(d).loss for d in fitted]
        for (narrow, low), (wide, high) in itertools.pairwise(zip(fitted, floors, strict=True)):
            if high > low + 1e-9:
                raise FitError(
                    f"the floor at d = {wide} ({high:.9f}) is above the floor at d = {narrow} ({low:.9f}): "
                    "a local optimum; report this configuration"
                )
        entropy_rate, by_width = self.entropy_rate(), dict(zip(fitted, floors, strict=True))
        table = pd.DataFrame(
            {
                "d": ds,
                "floor": [by_width[d] for d in ds],
                "entropy_rate": entropy_rate,
                "price": [by_width[d] - entropy_rate for d in ds],
                "unigram_entropy": self.unigram_entropy(),
            }
        )
        return table.assign(floor_layer_norm=[self.layer_norm_loss(d) for d in ds]) if layer_norm else table

    def _expected_cross_entropy(self, logits: NDArray[np.float64]) -> float:
        """``sum_c pi_c CE(P[c], softmax(logits[c]))`` of (V, V) logits."""
        peak = logits.max(axis=1, keepdims=True)
        log_partition = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        return float(self._stationary @ (log_partition - np.sum(self._probs * logits, axis=1)))

    def _svd_start(self, d: int, weighted: bool) -> Factors:
        row_centred = self._log_probs - self._log_probs.mean(axis=1, keepdims=True)
        weights = np.sqrt(self._stationary) if weighted else np.ones(self.vocab_size)
        bias = (weights**2 @ row_centred) / np.sum(weights**2)
        left, sigma, right_t = np.linalg.svd(weights[:, None] * (row_centred - bias) * weights)
        kept = min(d, self.vocab_size)
        root = np.sqrt(sigma[:kept])
        contexts, head = np.zeros((self.vocab_size, d)), np.zeros((self.vocab_size, d))
        contexts[:, :kept] = left[:, :kept] * root / weights[:, None]
        head[:, :kept] = right_t[:kept].T * root / weights[:, None]
        return contexts, head, bias

    def _widened_start(self, narrower: BottleneckFit, d: int) -> Factors:
        """The narrower optimum plus ``d - narrower.d`` columns along the steepest rank-r descent of the loss."""
        added = d - narrower.d
        pi = self._stationary
        scaling = (self.vocab_size * pi) ** -0.5
        logits = narrower.contexts @ narrower.head.T + narrower.bias
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        gradient = pi[:, None] * (probs - self._probs)
        # The gradient with respect to the product of the scaled factors is S G S (S = diag(scaling)).
        left, sigma, right_t = np.linalg.svd(scaling[:, None] * gradient * scaling)
        weights = sigma[:added] / sigma[0]
        new_contexts, new_head = scaling[:, None] * left[:, :added], scaling[:, None] * right_t[:added].T
        direction = (new_contexts * weights) @ new_head.T
        longest = 20.0 / np.max(np.abs(direction))  # a step that moves no logit by more than 20 nats
        search = scipy.optimize.minimize_scalar(
            lambda step: self._expected_cross_entropy(logits - step * direction),
            bounds=(0.0, longest),
            method="bounded",
        )
        # Brent's method never tries the step 0 itself: if it finds nothing lower, stay at the narrower optimum (a
        # saddle for the new columns, but it keeps the floor at or below the narrower one).
        root = np.sqrt((search.x if search.fun < narrower.loss else 0.0) * weights)
        contexts = np.concatenate([narrower.contexts, -new_contexts * root], axis=1)
        head = np.concatenate([narrower.head, new_head * root], axis=1)
        return contexts, head, narrower.bias.copy()

    def _fit(
        self,
        d: int,
        start_point: Factors,
        start: str,
    ) -> BottleneckFit:
        v = self.vocab_size
        pi = self._stationary
        joint = pi[:, None] * self._probs  # J[c, y] = pi_c P[c, y]
        scaling = (v * pi) ** -0.5
        evaluations = 0

        def unpack(x: NDArray[np.float64]) -> Factors:
            return (
                x[: v * d].reshape(v, d) * scaling[:, None],
                x[v * d : 2 * v * d].reshape(v, d) * scaling[:, None],
                x[2 * v * d :] * scaling,
            )

        # NumPy, not torch: torch's OpenMP threads slow these small operations down a hundredfold on a busy machine.
        def loss_and_gradient(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            nonlocal evaluations
            evaluations += 1
            contexts, head, bias = unpack(x)
            logits = contexts @ head.T
            logits += bias
            loss_joint = float(np.vdot(joint, logits))
            peak = logits.max(axis=1)
            logits -= peak[:, None]
            exp = np.exp(logits, out=logits)
            total = exp.sum(axis=1)
            loss = float(pi @ (np.log(total) + peak)) - loss_joint
            exp *= (pi / total)[:, None]
            gradient_logits = np.subtract(exp, joint, out=exp)  # pi_c (softmax(Z_c) - P[c])
            gradient = np.concatenate(
                [
                    ((gradient_logits @ head) * scaling[:, None]).ravel(),
                    ((gradient_logits.T @ contexts) * scaling[:, None]).ravel(),
                    gradient_logits.sum(axis=0) * scaling,
                ]
            )
            return loss, gradient

        contexts, head, bias = start_point
        x0 = np.concatenate([(contexts / scaling[:, None]).ravel(), (head / scaling[:, None]).ravel(), bias / scaling])
        began = time.perf_counter()
        result = scipy.optimize.minimize(
            loss_and_gradient,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": FIT_MAX_ITERATIONS, "maxfun": 2 * FIT_MAX_ITERATIONS, "ftol": FIT_FTOL,
                     "gtol": FIT_GTOL, "maxcor": 20},
        )  # fmt: skip
        seconds = time.perf_counter() - began
        max_gradient = float(np.max(np.abs(result.jac)))
        converged = result.status != 1 and max_gradient <= FIT_MAX_GRADIENT
        contexts, head, bias = unpack(result.x)
        return BottleneckFit(d, float(result.fun), contexts, head, bias, start, {start: float(result.fun)},
                             int(result.nit), evaluations, max_gradient, converged, seconds)  # fmt: skip
