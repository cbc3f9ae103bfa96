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
from scipy.sparse.linalg import svds
from numpy.typing import ArrayLike, NDArray

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
    rows = row_of[context_of]
    selected = rows >= 0
    matrix = scipy.sparse.coo_matrix(
        (np.ones(int(selected.sum())), (rows[selected], windows[selected, -1])), shape=(len(kept), vocab_size)
    ).tocsr()  # duplicates are summed: counts of (context, next token)
    matrix.sum_duplicates()
    matrix = scipy.sparse.diags(1.0 / counts[kept]) @ matrix
    return NgramMatrix(matrix.tocsr(), contexts[kept], counts[kept], len(contexts))


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
