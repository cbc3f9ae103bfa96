"""The inherent dimensionality of natural language, estimated from n-gram distributions (paper §5.1, Figure 7).

The ideal LM head would have to reproduce, for every context, the true next-token distribution. The paper
approximates that ideal with empirical n-gram distributions: a matrix with one row per observed (n-1)-token
context and, in each row, the distribution of the token that follows it. The W-error of that matrix at rank d
(Lemma 5.2) says how well any rank-d linear head could match it; the paper reads off 10,000 to 15,000
dimensions where the W-error becomes small.

The matrix is sparse (a context is followed by few distinct tokens), so W-error(d) is computed exactly from
the leading d singular values and the Frobenius norm, which the sparse entries give without any
decomposition. The rank is at most min(C, V) for C contexts and V tokens: the number of contexts matters as
much as the vocabulary, which the paper does not report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse
from numpy.typing import ArrayLike, NDArray
from scipy.sparse.linalg import svds

from satlib.errors import ConfigurationError

#: Above this many rows and columns, the smaller Gram matrix (a dense square) is too costly: use svds.
GRAM_LIMIT = 6_000


@dataclass(frozen=True)
class NgramMatrix:
    """Empirical next-token distributions of the most frequent contexts.

    Attributes:
        matrix: (C, V) CSR matrix; row i is the empirical distribution of the token after context i (sums to 1).
        contexts: (C, n - 1) token ids of each context.
        counts: (C,) occurrences of each context in the token stream.
        observed_contexts: distinct contexts in the stream (before keeping the most frequent C).
    """

    matrix: scipy.sparse.csr_matrix
    contexts: NDArray[np.int64]
    counts: NDArray[np.int64]
    observed_contexts: int

    @property
    def n_contexts(self) -> int:
        return self.matrix.shape[0]


def ngram_matrix(
    token_ids: ArrayLike, n: int = 5, vocab_size: int | None = None, max_contexts: int | None = None
) -> NgramMatrix:
    """The (contexts x vocabulary) matrix of empirical n-gram next-token distributions (paper §5.1).

    Args:
        token_ids: (N,) one token stream.
        n: n-gram order: contexts are the n - 1 preceding tokens (the paper uses n = 5).
        vocab_size: V, the number of columns (default: the largest id + 1).
        max_contexts: keep only the C most frequent contexts (ties: the context seen first wins); default all.

    Returns:
        The :class:`NgramMatrix`, rows ordered from the most to the least frequent context.
    """
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ConfigurationError(f"token_ids must be one 1-D stream, got shape {ids.shape}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ConfigurationError(f"n must be an integer of at least 2 (a context of n - 1 >= 1 tokens), got {n!r}")
    if ids.size < n:
        raise ConfigurationError(f"{ids.size} tokens are too few for one {n}-gram")
    if ids.min() < 0:
        raise ConfigurationError("token_ids must be non-negative")
    vocab_size = int(ids.max()) + 1 if vocab_size is None else vocab_size
    if ids.max() >= vocab_size:
        raise ConfigurationError(
            f"token id {int(ids.max())} is outside a vocabulary of {vocab_size}: pass its vocab_size"
        )
    if max_contexts is not None and max_contexts < 1:
        raise ConfigurationError(f"max_contexts must be at least 1, got {max_contexts}")
    windows, rows, contexts, counts, kept = _context_rows(ids, n, vocab_size, max_contexts)
    matrix = _row_distributions(rows, windows[:, -1], len(kept), vocab_size)
    return NgramMatrix(matrix, contexts[kept], counts[kept], len(contexts))


def _context_rows(
    ids: NDArray[np.int64], n: int, vocab_size: int, max_contexts: int | None
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Every n-gram window, the row of its context (-1 when not among the kept ones), the distinct contexts, their
    counts, and the kept contexts (most frequent first, ties to the first seen)."""
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    if vocab_size ** (n - 1) < 2**63:  # one int64 key per context: a 1-D unique, much faster than rows
        keys = windows[:, :-1] @ (vocab_size ** np.arange(n - 2, -1, -1, dtype=np.int64))
        _, first_seen, context_of, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        contexts = windows[first_seen, :-1]
    else:
        contexts, first_seen, context_of, counts = np.unique(
            windows[:, :-1], axis=0, return_index=True, return_inverse=True, return_counts=True
        )
    context_of = context_of.reshape(-1)
    order = np.lexsort((first_seen, -counts))  # most frequent first, then first seen
    kept = order if max_contexts is None else order[:max_contexts]
    row_of = np.full(len(contexts), -1, dtype=np.int64)
    row_of[kept] = np.arange(len(kept))
    return windows, row_of[context_of], contexts, counts, kept


def _row_distributions(
    rows: NDArray[np.int64], next_tokens: NDArray[np.int64], n_rows: int, vocab_size: int
) -> scipy.sparse.csr_matrix:
    """(n_rows, V) CSR matrix of the empirical next-token distribution of each row (rows < 0 are left out)."""
    selected = rows >= 0
    matrix = scipy.sparse.coo_matrix(
        (np.ones(int(selected.sum())), (rows[selected], next_tokens[selected])), shape=(n_rows, vocab_size)
    ).tocsr()  # duplicates are summed: counts of (context, next token)
    matrix.sum_duplicates()
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (scipy.sparse.diags(1.0 / np.maximum(totals, 1)) @ matrix).tocsr()


def split_half_matrices(
    token_ids: ArrayLike, n: int = 5, vocab_size: int | None = None, max_contexts: int | None = None
) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
    """The rows of :func:`ngram_matrix` estimated twice, independently: from the even-numbered and from the
    odd-numbered occurrences of each context. Their difference is pure sampling noise (the split-half check of
    :func:`noise_floor`)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    vocab_size = int(ids.max()) + 1 if vocab_size is None else vocab_size
    windows, rows, _, _, kept = _context_rows(ids, n, vocab_size, max_contexts)
    order = np.argsort(rows, kind="stable")  # occurrences of each row, in stream order
    sorted_rows = rows[order]
    starts = np.searchsorted(sorted_rows, sorted_rows, side="left")
    occurrence = np.empty_like(rows)
    occurrence[order] = np.arange(len(rows)) - starts
    halves = []
    for parity in (0, 1):
        chosen = np.where(occurrence % 2 == parity, rows, -1)
        halves.append(_row_distributions(chosen, windows[:, -1], len(kept), vocab_size))
    return halves[0], halves[1]


def noise_floor(ngrams: NgramMatrix) -> float:
    """Relative Frobenius norm of the sampling noise of an n-gram matrix: an analytic multinomial estimate.

    Row i is the empirical distribution of n_i draws from an unknown p_i, so E||p̂_i - p_i||² = (1 - ||p_i||²) / n_i,
    and with the unbiased ||p_i||² = (n_i ||p̂_i||² - 1) / (n_i - 1) this is (1 - ||p̂_i||²) / (n_i - 1). A row seen
    once is counted as all noise. The W-error of the measured matrix cannot be told apart from a matrix of noise
    below this level: ``sqrt(sum_i E||p̂_i - p_i||² / ||P̂||_F²)``.
    """
    squared = np.asarray(ngrams.matrix.multiply(ngrams.matrix).sum(axis=1)).ravel()
    counts = ngrams.counts.astype(np.float64)
    noise = np.where(counts > 1, (1 - squared) / np.maximum(counts - 1, 1), squared)
    return float(np.sqrt(noise.sum() / squared.sum()))


def split_half_floor(first: scipy.sparse.spmatrix, second: scipy.sparse.spmatrix, full: NgramMatrix) -> float:
    """The noise floor from the two halves of :func:`split_half_matrices`: the full matrix's noise is the average of
    the halves' noises, so E||N||² = E||P_a - P_b||² / 4 (independent halves), relative to ||P̂||_F."""
    return float(np.sqrt(frobenius_norm(first - second) ** 2 / 4) / frobenius_norm(full.matrix))


def dimension_above_floor(curve: ArrayLike, threshold: float, floor: float, margin: float = 2.0) -> int | None:
    """:func:`dimension_at` read only where the curve stands clearly above the noise: None when ``threshold`` is
    below ``margin`` times the floor (the curve there cannot be told apart from sampling noise)."""
    return dimension_at(curve, threshold) if threshold >= margin * floor else None


def frobenius_norm(matrix: scipy.sparse.spmatrix | NDArray) -> float:
    """Exact Frobenius norm from the stored entries (no decomposition)."""
    values = matrix.data if scipy.sparse.issparse(matrix) else np.asarray(matrix)
    return float(np.sqrt(np.sum(np.square(values, dtype=np.float64))))


def leading_singular_values(
    matrix: scipy.sparse.spmatrix | NDArray, k: int, method: Literal["auto", "gram", "svds"] = "auto"
) -> NDArray[np.float64]:
    """The ``k`` largest singular values of a (sparse) matrix, in decreasing order, shape (k,).

    Methods:
        ``gram``: eigenvalues of the smaller Gram matrix (``M Mᵀ`` or ``Mᵀ M``, dense, min(C, V) squared):
            every singular value at once; exact up to the rounding of squaring (values far below
            ``sqrt(eps) * sigma_1`` lose relative precision, which W-error does not feel).
        ``svds``: ``scipy.sparse.linalg.svds`` (ARPACK Lanczos), only the leading ``k``; for large matrices.
        ``auto``: ``gram`` when min(C, V) <= :data:`GRAM_LIMIT`, else ``svds``.
    """
    rows, columns = matrix.shape
    smaller = min(rows, columns)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= smaller:
        raise ConfigurationError(f"k must be an integer in [1, min(C, V) = {smaller}], got {k!r}")
    if method == "auto":
        method = "gram" if smaller <= GRAM_LIMIT else "svds"
    if method == "gram":
        sparse = scipy.sparse.csr_matrix(matrix, dtype=np.float64)
        gram = (sparse @ sparse.T) if rows <= columns else (sparse.T @ sparse)
        eigenvalues = np.linalg.eigvalsh(gram.toarray())[::-1][:k]
        return np.sqrt(np.clip(eigenvalues, 0.0, None))
    if method == "svds":
        if k >= smaller:  # ARPACK needs k < min(C, V): the last value comes from the Frobenius norm
            values = leading_singular_values(matrix, smaller - 1, "svds") if smaller > 1 else np.empty(0)
            last = np.sqrt(max(frobenius_norm(matrix) ** 2 - np.sum(values**2), 0.0))
            return np.sort(np.concatenate([values, [last]]))[::-1]
        start = np.random.default_rng(0).standard_normal(smaller)  # ARPACK's own start is random: fix it
        sparse = scipy.sparse.csr_matrix(matrix, dtype=np.float64)
        # An explicit tolerance: with ARPACK's default, repeated singular values (duplicate one-hot rows of an
        # n-gram matrix) came back off by 3e-2 at k = 500 (benchmarks/bench_ngram.py).
        values = svds(sparse, k=k, return_singular_vectors=False, v0=start, tol=1e-10)
        return np.sort(values)[::-1]
    raise ConfigurationError(f"unknown method {method!r}: use 'auto', 'gram' or 'svds'")


def sparse_w_error_curve(
    matrix: scipy.sparse.spmatrix | NDArray, d_max: int | None = None, method: Literal["auto", "gram", "svds"] = "auto"
) -> NDArray[np.float64]:
    """W-error(d) for d = 0..d_max of a (sparse) matrix, shape (d_max + 1,) (paper §5.1, Figure 7).

    ``W-error(d)² = 1 - (sigma_1² + ... + sigma_d²) / ||M||_F²``: exact with only the leading d singular
    values and the Frobenius norm. Equal to :func:`satlib.metrics.w_error_curve` of all singular values.

    Args:
        matrix: (C, V) matrix, e.g. :attr:`NgramMatrix.matrix`.
        d_max: largest rank (default min(C, V): the whole curve).
        method: see :func:`leading_singular_values`.
    """
    smaller = min(matrix.shape)
    d_max = smaller if d_max is None else d_max
    if not 1 <= d_max <= smaller:
        raise ConfigurationError(f"d_max must be in [1, min(C, V) = {smaller}], got {d_max}")
    sigma = leading_singular_values(matrix, d_max, method)
    total = frobenius_norm(matrix) ** 2
    explained = np.concatenate([[0.0], np.cumsum(sigma**2)])
    return np.sqrt(np.clip(1.0 - explained / total, 0.0, 1.0))


def dimension_at(curve: ArrayLike, threshold: float) -> int | None:
    """Smallest d with W-error(d) <= ``threshold``, or None if the curve never gets there."""
    below = np.flatnonzero(np.asarray(curve) <= threshold)
    return int(below[0]) if below.size else None


def context_sweep(ngrams: NgramMatrix, context_counts: list[int]) -> dict[int, NDArray[np.float64]]:
    """W-error curves of an n-gram matrix restricted to its C most frequent contexts, for each C.

    The rows of :func:`ngram_matrix` are ordered by frequency, so the first C rows are those contexts.

    Returns:
        ``{C: curve}``, each curve of length min(C, V) + 1 (C capped at the rows available).
    """
    return {
        min(count, ngrams.n_contexts): sparse_w_error_curve(ngrams.matrix[: min(count, ngrams.n_contexts)])
        for count in context_counts
    }
