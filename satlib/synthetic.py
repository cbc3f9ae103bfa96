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

import inspect
import math
import numbers
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike, NDArray

from satlib import bottleneck
from satlib.bottleneck import BottleneckFit, BottleneckFloors
from satlib.config import cache_dir
from satlib.errors import ConfigurationError
from satlib.storage import digest, read_json, write_json

#: A block of the stream ends with a bridge whose length K is the first power of two with
#: ``max |P^K[c, a] / pi_a - 1| <= MIXING_TOLERANCE``: beyond K steps the chain has forgotten where it was, to
#: this relative precision (float64 rounding of P^K is about 1e-12 at V = 1,024).
MIXING_TOLERANCE = 1e-9

#: Longest bridge accepted: a chain that needs more steps to mix is too sharp for this sampler.
MAX_MIXING_STEPS = 2**16

# Domain tags of the counter-based seeds, so that sample(seed=s) and batch(seed=s) never share random numbers.
_STREAM_ANCHOR, _STREAM_BLOCK, _BATCH = 0x5A01, 0x5A02, 0x5A03


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

    @property
    def _floors(self) -> BottleneckFloors:
        return _floors_of(self)  # shared by equal languages: a world rebuilt from its parameters refits nothing

    def best_rank_fit(self, d: int) -> BottleneckFit:
        """The best width-d log-linear model of the language (``BottleneckFloors.best_rank_fit`` of
        :mod:`satlib.bottleneck`, which says why a width-d GPT-NeoX student cannot go below its loss). Cached."""
        return self._floors.best_rank_fit(d)

    def best_rank_loss(self, d: int) -> float:
        """The bottleneck floor of width d in nats: ``best_rank_fit(d).loss``."""
        return self._floors.best_rank_fit(d).loss

    def floor_table(self, widths: list[int], layer_norm: bool = False) -> pd.DataFrame:
        """The bottleneck floor for each width (:meth:`satlib.bottleneck.BottleneckFloors.floor_table`, with the
        layer-norm class's floor if ``layer_norm``), stored as JSON in the cache under the language's parameters
        and the widths (the fits take seconds to minutes; a chapter run again, or its test, reads them back)."""
        key = digest([asdict(self), sorted(set(widths)), _fit_source(), *(["layer norm"] if layer_norm else [])])
        path = cache_dir() / "floors" / f"{key}.json"
        if path.is_file():
            return pd.DataFrame(read_json(path))
        table = self._floors.floor_table(widths, layer_norm)
        write_json(path, table.to_dict(orient="records"))
        return table


@cache
def _fit_source() -> str:
    """Digest of the sources of :mod:`satlib.bottleneck`, which fits the floors, and of this module, which builds the
    language they are fitted on."""
    return digest([inspect.getsource(bottleneck), inspect.getsource(SyntheticLanguage)])


@cache
def _floors_of(language: SyntheticLanguage) -> BottleneckFloors:
    """The floors of a language (its fits are cached inside), one object per distinct language."""
    return BottleneckFloors(language._log_probs, language._probs, language._stationary, language.rank)
