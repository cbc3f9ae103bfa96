"""A synthetic language with an exactly known next-token distribution of controlled rank: a controlled test of the
paper's mechanism, the softmax bottleneck of §5.2 behind the saturation of §3.

The world is a first-order Markov source over V tokens: the next token depends on the previous one only, so a
model must read its context, and every quantity a trained model is compared with is exact, not estimated. Row c of
the (V, V) transition matrix P is the next-token distribution after token c:

    log P[c, y] = scale * U_c . W_y - zipf * log(y + 1) - log Z_c,

with U and W fixed (V, rank) Gaussian factors (entries N(0, 1 / sqrt(rank)), so ``U_c . W_y`` has unit variance
and ``scale`` is the spread of the context-dependent logits), token ids ordered by their Zipf rank y + 1, and
``log Z_c`` the row's log-partition.

What holds exactly (for Gaussian factors, with probability one, when rank + 2 <= V):
    - the doubly centred log-probability matrix (row means and column means removed, ``centred_log_probs``) is
      ``scale * (J U)(J W)^T`` with ``J`` the centring projection: its rank is exactly ``min(rank, V - 1)``;
    - removing only the row means (the log-partitions) leaves ``rank + 1`` if zipf > 0, ``rank`` if zipf = 0 (the
      frequency bias is one more column direction);
    - the raw log-probability matrix has rank ``rank + 2`` if zipf > 0 and ``rank + 1`` if zipf = 0 (the
      log-partitions add one row direction).
The token frequencies (the stationary distribution pi) are a Zipf law times a per-token factor:
``log pi_y = const - zipf * log(y + 1) + log m_y`` with ``m_y = sum_c pi_c exp(scale * U_c . W_y - log Z_c)``, the
same function of W_y for every token, so independent of the rank y + 1 in distribution (the rows of W are i.i.d.).
The least-squares exponent of log pi against log rank is therefore unbiased, and the spread around the law grows
with ``scale`` (``frequency_fit``). At V = 1,024, scale 1.06 (seed 0): fitted exponents 0.993, 1.006 and 1.001 for
ranks 64, 32 and 128 at zipf 1, residual standard deviation 0.19 to 0.20 nats (a factor of about 1.2 around the
law); at zipf 0, exponents within 0.01 of 0 and residuals of 0.08 to 0.14 nats.

Exact quantities: ``log_probs``, ``stationary``, ``entropy_rate`` (the loss of the true distribution, the floor of
any model), ``unigram_entropy`` (the loss of the best context-free model), ``nll`` of a token stream, and
``best_rank_loss(d)``, the floor of a width-d softmax head (its docstring says why a width-d GPT-NeoX cannot go
below it).

Sampling is counter-based and vectorised: ``batch(step, ...)`` returns independent windows, each a chain started
from pi, deterministic per (seed, step); ``sample(n, seed, start)`` is one endless stationary stream, cut into
blocks that are generated independently (so it resumes at any position) and joined exactly (see ``sample``). Both
draw by inverse CDF on float64 cumulative sums; a token's sampling probability is exact up to the float64 grid of
``c + u`` (spacing at most ``V * 2**-52``), a total-variation error below ``V**2 * 2**-52`` per token.
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.optimize
import torch
from numpy.typing import ArrayLike, NDArray

from satlib.errors import ConfigurationError, FitError

#: A block of the stream ends with a bridge whose length K is the first power of two with
#: ``max |P^K[c, a] / pi_a - 1| <= MIXING_TOLERANCE``: beyond K steps the chain has forgotten where it was, to
#: this relative precision (float64 rounding of P^K is about 1e-12 at V = 1,024).
MIXING_TOLERANCE = 1e-9

#: Longest bridge accepted: a chain that needs more steps to mix is too sharp for this sampler.
MAX_MIXING_STEPS = 2**16

# Domain tags of the counter-based seeds, so that sample(seed=s) and batch(seed=s) never share random numbers.
_STREAM_ANCHOR, _STREAM_BLOCK, _BATCH = 0x5A01, 0x5A02, 0x5A03

#: Factors of a width-d model: A (V, d), B (V, d) and b (V,).
Factors = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]

#: The bottleneck fit: L-BFGS stops when the relative decrease of the loss falls below FIT_FTOL or the largest
#: preconditioned gradient entry below FIT_GTOL; a fit that stops with a larger gradient than FIT_MAX_GRADIENT (or
#: on FIT_MAX_ITERATIONS) has not converged.
FIT_FTOL, FIT_GTOL, FIT_MAX_GRADIENT, FIT_MAX_ITERATIONS = 1e-15, 1e-10, 1e-6, 20_000


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}: pass an int >= {minimum}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _finite(name: str, value: Any, minimum: float, inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (not inclusive and value == minimum):
        relation = ">=" if inclusive else ">"
        raise ConfigurationError(f"{name} must be {relation} {minimum}, got {value}")
    return float(value)


@dataclass(frozen=True)
class FrequencyFit:
    """Least-squares Zipf law ``log pi_y = intercept - exponent * log(y + 1)`` of the stationary frequencies.

    Attributes:
        exponent: the fitted Zipf exponent (compare with the language's ``zipf``).
        standard_error: the exponent's ordinary least-squares standard error.
        residual_std: standard deviation of ``log pi_y`` around the law, in nats.
    """

    exponent: float
    standard_error: float
    residual_std: float


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


@dataclass(frozen=True)
class SyntheticLanguage:
    """A first-order Markov language with next-token log-probabilities of rank ``rank`` (see the module docstring).

    Args:
        vocab_size: V, number of tokens (>= 2).
        rank: dimension of the factors U, W (1 <= rank <= V).
        zipf: exponent of the frequency bias ``-zipf * log(y + 1)`` (0: no bias; >= 0).
        seed: seed of the factors U and W (the world); sampling has its own seeds.
        scale: standard deviation of the context-dependent logits ``scale * U_c . W_y`` (> 0). The first trial of
            this world used ``3 / 64**0.25`` (about 1.06).
        block_length: length of the independently generated blocks of ``sample``'s stream (>= 2). Resuming at a
            position generates at most one block too many.
    """

    vocab_size: int
    rank: int
    zipf: float = 1.0
    seed: int = 0
    scale: float = 1.0
    block_length: int = 16_384

    def __post_init__(self) -> None:
        vocab_size = _integer("vocab_size", self.vocab_size, 2)
        rank = _integer("rank", self.rank, 1)
        if rank > vocab_size:
            raise ConfigurationError(
                f"rank {rank} is above the vocabulary size {vocab_size}: pass rank <= {vocab_size}"
            )
        _finite("zipf", self.zipf, 0.0)
        _integer("seed", self.seed, 0)
        _finite("scale", self.scale, 0.0, inclusive=False)
        _integer("block_length", self.block_length, 2)

    # ---------------------------------------------------------------- the world

    @cached_property
    def factors(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(U, W), each (V, rank), entries N(0, 1 / sqrt(rank)), drawn from ``seed``."""
        rng = np.random.default_rng(self.seed)
        u = rng.standard_normal((self.vocab_size, self.rank)) / self.rank**0.25
        w = rng.standard_normal((self.vocab_size, self.rank)) / self.rank**0.25
        u.setflags(write=False)
        w.setflags(write=False)
        return u, w

    @cached_property
    def _log_probs(self) -> NDArray[np.float64]:
        u, w = self.factors
        logits = self.scale * (u @ w.T) - self.zipf * np.log(np.arange(1, self.vocab_size + 1, dtype=np.float64))
        log_probs = logits - torch.logsumexp(torch.from_numpy(logits), dim=1, keepdim=True).numpy()
        log_probs.setflags(write=False)
        return log_probs

    def log_probs(self) -> NDArray[np.float64]:
        """log P, shape (V, V), float64: row c is the log-distribution of the token after token c (read-only)."""
        return self._log_probs

    @cached_property
    def _probs(self) -> NDArray[np.float64]:
        probs = np.exp(self._log_probs)
        probs.setflags(write=False)
        return probs

    def centred_log_probs(self) -> NDArray[np.float64]:
        """log P with its row means and column means removed, shape (V, V): exactly ``scale * (J U)(J W)^T``, of
        rank ``min(rank, V - 1)`` (the log-partitions and the frequency bias are gone)."""
        row_centred = self._log_probs - self._log_probs.mean(axis=1, keepdims=True)
        return row_centred - row_centred.mean(axis=0, keepdims=True)

    @cached_property
    def _stationary(self) -> NDArray[np.float64]:
        probs = self._probs
        v = self.vocab_size
        # pi (I - P + 1 1^T) = 1^T has the unique solution pi P = pi, sum pi = 1 (P is positive, so irreducible).
        pi = np.linalg.solve((np.eye(v) - probs + 1.0).T, np.ones(v))
        for _ in range(100):  # polish: pi P is an average of positive terms, accurate even for the rarest tokens
            updated = pi @ probs
            updated /= updated.sum()
            done = np.max(np.abs(updated - pi) / updated) < 1e-15
            pi = updated
            if done:
                break
        pi.setflags(write=False)
        return pi

    def stationary(self) -> NDArray[np.float64]:
        """The stationary distribution pi, shape (V,): ``pi P = pi``, the long-run token frequencies (read-only)."""
        return self._stationary

    def entropy_rate(self) -> float:
        """``H = sum_c pi_c H(P[c])`` in nats per token: the expected loss of the true next-token distribution,
        below which no model of any kind can go in expectation."""
        row_entropy = -np.sum(self._probs * self._log_probs, axis=1)
        return float(self._stationary @ row_entropy)

    def unigram_entropy(self) -> float:
        """``H(pi)`` in nats: the expected loss of the best model that ignores the context (and an upper bound of
        every ``best_rank_loss(d)``, whose bias alone reaches it)."""
        pi = self._stationary
        return float(-np.sum(pi * np.log(pi)))

    def frequency_fit(self) -> FrequencyFit:
        """How close the stationary frequencies are to a Zipf law: least squares of log pi_y on log(y + 1)."""
        x = np.log(np.arange(1, self.vocab_size + 1, dtype=np.float64))
        y = np.log(self._stationary)
        slope, intercept = np.polyfit(x, y, 1)
        residuals = y - (slope * x + intercept)
        dof = max(self.vocab_size - 2, 1)
        standard_error = math.sqrt(np.sum(residuals**2) / dof / np.sum((x - x.mean()) ** 2))
        return FrequencyFit(float(-slope), standard_error, float(residuals.std()))

    def nll(self, tokens: ArrayLike | torch.Tensor) -> float:
        """Mean exact negative log-probability (nats) of each token given the previous one.

        Args:
            tokens: (N,) one stream, or (B, N) independent streams (e.g. ``batch``'s windows); the first token of
                each stream is not scored (its previous token is unknown). N >= 2.
        """
        ids = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
        if ids.ndim not in (1, 2) or ids.shape[-1] < 2:
            raise ConfigurationError(f"nll needs a (N,) or (B, N) token array with N >= 2, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise ConfigurationError(f"nll needs integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ConfigurationError(f"token ids must lie in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        return float(-self._log_probs[ids[..., :-1], ids[..., 1:]].mean())

    # ---------------------------------------------------------------- sampling

    @cached_property
    def _transition_keys(self) -> NDArray[np.float64]:
        # Row c's cumulative distribution shifted by c and flattened: one sorted array, so that one searchsorted
        # of c + u finds the inverse CDF of every row at once, without copying rows.
        cdf = np.cumsum(self._probs, axis=1)
        cdf[:, -1] = 1.0
        return (cdf + np.arange(self.vocab_size, dtype=np.float64)[:, None]).ravel()

    @cached_property
    def _stationary_cdf(self) -> NDArray[np.float64]:
        cdf = np.cumsum(self._stationary)
        cdf[-1] = 1.0
        return cdf

    def _first_tokens(self, uniforms: NDArray[np.float64]) -> NDArray[np.int64]:
        tokens = np.searchsorted(self._stationary_cdf, uniforms, side="right")
        return np.minimum(tokens, self.vocab_size - 1).astype(np.int64)

    def _next_tokens(self, previous: NDArray[np.int64], uniforms: NDArray[np.float64]) -> NDArray[np.int64]:
        # Keys of rows before c are <= c, keys of row c are c + cdf: the count of keys <= c + u is c V + token.
        position = np.searchsorted(self._transition_keys, previous + uniforms, side="right")
        return np.minimum(position - previous * self.vocab_size, self.vocab_size - 1)

    @cached_property
    def mixing_steps(self) -> int:
        """K: the first power of two with ``max_{c,a} |P^K[c, a] / pi_a - 1| <= MIXING_TOLERANCE``."""
        pi = self._stationary
        power, steps = self._probs.copy(), 1
        while np.max(np.abs(power / pi - 1.0)) > MIXING_TOLERANCE:
            if steps >= MAX_MIXING_STEPS:
                raise ConfigurationError(
                    f"the chain has not mixed after {steps} steps (scale {self.scale} is too sharp): lower scale"
                )
            power, steps = power @ power, 2 * steps
        return steps

    def _bridge_weights(self, end_tokens: NDArray[np.int64]) -> NDArray[np.float64]:
        """``h[k - 1, i, y] = P^k[y, end_tokens[i]]`` for k = 1 .. K - 1, shape (K - 1, B, V)."""
        steps = self.mixing_steps
        weights = np.empty((steps - 1, end_tokens.size, self.vocab_size))
        if steps > 1:
            weights[0] = self._probs[:, end_tokens].T
            for k in range(1, steps - 1):
                weights[k] = weights[k - 1] @ self._probs.T
        return weights

    def _blocks(self, first: int, last: int, seed: int) -> NDArray[np.int64]:
        """Blocks ``first .. last`` of the stream of ``seed``, shape (last - first + 1, block_length)."""
        length, steps = self.block_length, self.mixing_steps
        if steps >= length:
            raise ConfigurationError(
                f"block_length {length} is not longer than the chain's mixing time ({steps} steps): "
                f"pass block_length >= {2 * steps}"
            )
        indices = range(first, last + 2)  # every block also needs the next block's anchor
        anchors = self._first_tokens(
            np.array([np.random.default_rng([seed, _STREAM_ANCHOR, b]).random() for b in indices])
        )
        uniforms = np.stack(
            [np.random.default_rng([seed, _STREAM_BLOCK, b]).random(length) for b in indices[:-1]]
        )  # uniforms[:, 0] is unused: position 0 of a block is its anchor
        tokens = np.empty(uniforms.shape, dtype=np.int64)
        tokens[:, 0] = anchors[:-1]
        for t in range(1, length - steps + 1):  # at least K steps from the next anchor: plain forward steps
            tokens[:, t] = self._next_tokens(tokens[:, t - 1], uniforms[:, t])
        bridge = self._bridge_weights(anchors[1:])
        for t in range(length - steps + 1, length):  # k = length - t < K steps left: the exact bridge
            weights = self._probs[tokens[:, t - 1]] * bridge[length - t - 1]
            cdf = np.cumsum(weights, axis=1)
            below = cdf <= (uniforms[:, t] * cdf[:, -1])[:, None]  # the first y with cdf > u * total
            tokens[:, t] = np.minimum(below.sum(axis=1), self.vocab_size - 1)
        return tokens

    def sample(self, n_tokens: int, seed: int, start: int = 0) -> NDArray[np.int64]:
        """Tokens at positions ``[start, start + n_tokens)`` of the endless stationary stream of ``seed``.

        The stream is cut into blocks of ``block_length`` tokens, each generated from its own counter-based seed
        ``(seed, block)``, so any slice is produced without the tokens before it and equals the same slice of a
        longer sample. The first token of every block (its anchor) is drawn from pi independently; the block's
        tokens then follow the chain forward, and its last K - 1 tokens (``mixing_steps``) follow the exact bridge
        that ends in the next block's anchor (the chain conditioned on ``x_end``: weights ``P[c, y] P^k[y, x_end]``).
        The bridge's normalisers telescope: a stretch of the stream has the probability ``pi(x_0) prod_t P[x_t-1,
        x_t]`` of the stationary Markov chain times ``pi_a / P^K[x, a]`` per block join (x the token K steps before
        the anchor a), a factor within ``1 +- MIXING_TOLERANCE``. So ``nll`` of the stream converges to
        ``entropy_rate``, block joins included.

        Returns:
            (n_tokens,) int64 token ids.
        """
        n_tokens = _integer("n_tokens", n_tokens, 0)
        seed = _integer("seed", seed, 0)
        start = _integer("start", start, 0)
        if n_tokens == 0:
            return np.empty(0, dtype=np.int64)
        first, last = start // self.block_length, (start + n_tokens - 1) // self.block_length
        pieces = []
        # Blocks generated together: at most 2^20 uniforms and 2^20 bridge weights (8 MB each).
        chunk = max(1, min(2**20 // self.block_length, 2**20 // (self.mixing_steps * self.vocab_size)))
        for block in range(first, last + 1, chunk):
            pieces.append(self._blocks(block, min(block + chunk - 1, last), seed).ravel())
        offset = start - first * self.block_length
        return np.concatenate(pieces)[offset : offset + n_tokens]

    def batch(self, step: int, batch_size: int, context: int, seed: int) -> torch.Tensor:
        """Training windows for ``step``: (batch_size, context + 1) int64, independent chains started from pi.

        Window i is ``x_0 ~ pi`` followed by ``context`` steps of the chain, so every target (positions 1 ..
        context) has its previous token in the window and its expected loss under the true distribution is exactly
        ``entropy_rate``. The random numbers come from the counter-based seed ``(seed, step)``: the same (seed,
        step) gives the same windows, different steps give independent windows (an endless fresh stream that
        resumes at any step), and a held-out set is ``batch`` with a seed the training does not use. All windows
        advance together, one inverse-CDF search per position.
        """
        step = _integer("step", step, 0)
        batch_size = _integer("batch_size", batch_size, 1)
        context = _integer("context", context, 1)
        seed = _integer("seed", seed, 0)
        uniforms = np.random.default_rng([seed, _BATCH, step]).random((context + 1, batch_size))
        tokens = np.empty((context + 1, batch_size), dtype=np.int64)
        tokens[0] = self._first_tokens(uniforms[0])
        for t in range(1, context + 1):
            tokens[t] = self._next_tokens(tokens[t - 1], uniforms[t])
        return torch.from_numpy(np.ascontiguousarray(tokens.T))

    # ---------------------------------------------------------------- the bottleneck floor

    @cached_property
    def _fits(self) -> dict[int, BottleneckFit]:
        return {}

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
        d = _integer("d", d, 1)
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

    def floor_table(self, widths: list[int]) -> pd.DataFrame:
        """The bottleneck floor for each width, one row per width in increasing order.

        Columns: ``d``, ``floor`` (``best_rank_loss``), ``entropy_rate``, ``price`` (floor - entropy rate: the
        excess loss a width-d head pays on this language however long it trains), ``unigram_entropy``.

        Raises:
            FitError: a wider floor above a narrower one by more than 1e-9 nats (a local optimum was kept: the
                floors cannot be trusted).
        """
        ds = sorted({_integer("width", d, 1) for d in widths})
        floors = [self.best_rank_loss(d) for d in ds]
        for (narrow, low), (wide, high) in itertools.pairwise(zip(ds, floors, strict=True)):
            if high > low + 1e-9:
                raise FitError(
                    f"the floor at d = {wide} ({high:.9f}) is above the floor at d = {narrow} ({low:.9f}): "
                    "a local optimum; report this configuration"
                )
        entropy_rate = self.entropy_rate()
        return pd.DataFrame(
            {
                "d": ds,
                "floor": floors,
                "entropy_rate": entropy_rate,
                "price": [floor - entropy_rate for floor in floors],
                "unigram_entropy": self.unigram_entropy(),
            }
        )

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
