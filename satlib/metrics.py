"""Measurements of representations and heads: anisotropy, singular spectra, W-error.

Pure functions of arrays (NumPy arrays or PyTorch tensors); nothing here knows about models or files.

* :func:`anisotropy`: average cosine similarity between distinct pairs of representations (paper §4.1,
  Figures 2 and 3).
* :func:`normalised_spectrum`, :func:`singular_entropy`, :func:`effective_rank`: the LM head's singular
  spectrum (paper §4.2, Figures 4 and 5; Roy & Vetterli 2007).
* :func:`w_error`, :func:`w_error_curve`: the relative Eckart–Young–Mirsky error of the best rank-d
  approximation (paper §5.1 and Lemma 5.2, Figures 7 and 8).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import spearmanr

from satlib.errors import ConfigurationError


def _as_numpy(values: Any) -> NDArray[np.float64]:
    """Float64 NumPy copy of an array-like or a (possibly GPU) torch tensor."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().to("cpu").double().numpy()
    return np.asarray(values, dtype=np.float64)


def _checked_spectrum(singular_values: ArrayLike) -> NDArray[np.float64]:
    """Validate a singular spectrum and return it sorted in decreasing order."""
    sigma = _as_numpy(singular_values)
    if sigma.ndim != 1 or sigma.size == 0:
        raise ConfigurationError(f"singular_values must be a non-empty 1-D array, got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)):
        raise ConfigurationError("singular_values contain NaN or infinity: check the matrix they came from")
    if np.any(sigma < 0):
        raise ConfigurationError("singular_values must be non-negative (pass sigma, not eigenvalues of a difference)")
    if not np.any(sigma > 0):
        raise ConfigurationError("singular_values are all zero: the spectrum of a zero matrix has no shape")
    return np.sort(sigma)[::-1]


def singular_values(matrix: Any) -> NDArray[np.float64]:
    """Singular values of a 2-D matrix (e.g. an LM head of shape (V, d)), in decreasing order."""
    values = _as_numpy(matrix)
    if values.ndim != 2:
        raise ConfigurationError(f"matrix must be 2-D, got shape {values.shape}")
    return np.linalg.svd(values, compute_uv=False)


def w_error(singular_values: ArrayLike, d: int) -> float:
    """Relative error of the best rank-``d`` approximation of a matrix with these singular values.

    ``W-error(d) = ||sigma_{d+1:}||_2 / ||W||_F`` (paper §5.1; by Lemma 5.2, Eckart–Young–Mirsky, the
    numerator is the Frobenius distance from W to its closest rank-d matrix).

    Args:
        singular_values: shape (k,), all of W's singular values (any order).
        d: rank of the approximation, ``0 <= d <= k``.
    """
    sigma = _checked_spectrum(singular_values)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= sigma.size:
        raise ConfigurationError(f"d must be an integer in [0, {sigma.size}], got {d!r}")
    energy = np.square(sigma)
    return float(np.sqrt(energy[d:].sum() / energy.sum()))


def w_error_curve(singular_values: ArrayLike) -> NDArray[np.float64]:
    """W-error(d) for every d in ``0..k`` at once, shape (k + 1,); entry d equals :func:`w_error`."""
    sigma = _checked_spectrum(singular_values)
    energy = np.square(sigma)
    tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
    return np.sqrt(np.clip(tail / energy.sum(), 0.0, 1.0))


def normalised_spectrum(singular_values: ArrayLike) -> NDArray[np.float64]:
    """Singular values divided by the largest, in decreasing order (paper Figure 4), shape (k,)."""
    sigma = _checked_spectrum(singular_values)
    return sigma / sigma[0]


def _spectrum_distribution(singular_values: ArrayLike, power: float) -> NDArray[np.float64]:
    sigma = _checked_spectrum(singular_values)
    if power <= 0:
        raise ConfigurationError(f"power must be positive (1 for sigma, 2 for sigma squared), got {power}")
    weights = sigma**power
    return weights / weights.sum()


def singular_entropy(singular_values: ArrayLike, power: float = 1) -> float:
    """KL divergence between the normalised singular-value distribution and the uniform one (Figure 5).

    ``p_i = sigma_i**power / sum_j sigma_j**power`` and the result is ``KL(p || U) = log k - H(p)``.
    The paper does not say whether sigma (``power=1``) or sigma squared (``power=2``) is normalised.
    A flat spectrum gives 0; a rank-one matrix gives ``log k``, the maximum.

    Args:
        singular_values: shape (k,).
        power: exponent applied to sigma before normalising.
    """
    p = _spectrum_distribution(singular_values, power)
    nonzero = p[p > 0]
    return float(np.log(p.size) + np.sum(nonzero * np.log(nonzero)))


def effective_rank(singular_values: ArrayLike) -> float:
    """Effective rank of Roy & Vetterli (2007): ``exp(H(p))`` with ``p = sigma / sum(sigma)``.

    Equals n for the identity of size n and 1 for a rank-one matrix.
    """
    p = _spectrum_distribution(singular_values, power=1)
    nonzero = p[p > 0]
    return float(np.exp(-np.sum(nonzero * np.log(nonzero))))


def numerical_rank(matrix: Any, rtol: float | None = None) -> int:
    """Number of singular values above ``rtol * sigma_max`` (default: ``max(shape) * eps``, as NumPy)."""
    return rank_of_spectrum(singular_values(matrix), *np.shape(matrix), rtol=rtol)


def rank_of_spectrum(singular_values: ArrayLike, rows: int, columns: int, rtol: float | None = None) -> int:
    """Numerical rank of a (rows, columns) matrix from its singular values: those above ``rtol * sigma_max``
    (default ``max(rows, columns) * eps``, as ``numpy.linalg.matrix_rank``)."""
    sigma = np.asarray(singular_values, dtype=np.float64)
    if sigma.size == 0 or sigma.max() == 0:
        return 0
    tolerance = (max(rows, columns) * np.finfo(np.float64).eps) if rtol is None else rtol
    return int(np.sum(sigma > tolerance * sigma.max()))


def frequency_alignment(head: Any, log_frequency: Any, k: int = 5) -> NDArray[np.float64]:
    """Spearman correlation of each of the head's top-k singular directions with token log-frequency.

    The paper (§4.2, discussion) hypothesises that after the spectrum collapses the dominant directions of the
    head encode token frequency. For a head W = U S V^T of shape (V, d), the i-th direction's projection of the
    tokens is ``U[:, i] * S[i]``; its rank correlation with ``log_frequency`` (shape (V,)) is returned, sign
    removed (singular vectors have no sign), shape (k,).
    """
    matrix = _as_numpy(head)
    frequency = _as_numpy(log_frequency)
    if matrix.ndim != 2 or frequency.shape != (matrix.shape[0],):
        raise ConfigurationError(
            f"head must be (V, d) and log_frequency (V,), got {matrix.shape} and {frequency.shape}"
        )
    u, _, _ = np.linalg.svd(matrix, full_matrices=False)
    return np.array([abs(spearmanr(u[:, i], frequency).statistic) for i in range(min(k, u.shape[1]))])


def anisotropy_from_unit_sum(unit_sum: Any, count: int) -> float:
    """Average pairwise cosine similarity of ``count`` unit vectors from their sum alone (paper §4.1).

    ``sum_{i != j} cos(h_i, h_j) = ||sum_i u_i||^2 - n``, so a stream of batches only needs to keep the running
    sum of its unit vectors, shape (d,). The result is clipped to the exact bounds ``[-1/(n-1), 1]`` to absorb
    floating-point round-off.
    """
    if count < 2:
        raise ConfigurationError(f"anisotropy needs at least 2 vectors, got {count}")
    total = float(np.square(np.linalg.norm(_as_numpy(unit_sum))))
    value = (total - count) / (count * (count - 1))
    return float(np.clip(value, -1.0 / (count - 1), 1.0))


def anisotropy(hidden: Any) -> float:
    """Average cosine similarity over all distinct pairs of rows (paper §4.1).

    Computed in O(n d) through the mean of unit vectors (:func:`anisotropy_from_unit_sum`). The result lies in
    ``[-1/(n-1), 1]``: 1 for collinear rows, ``-1/(n-1)`` for a regular simplex.

    Args:
        hidden: shape (n, d), n >= 2 representations (e.g. last-layer hidden states of n tokens).
    """
    values = _as_numpy(hidden)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ConfigurationError(f"hidden must have shape (n, d) with n >= 2, got {values.shape}")
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ConfigurationError("hidden has a zero or non-finite row: cosine similarity is undefined for it")
    return anisotropy_from_unit_sum((values / norms).sum(axis=0), values.shape[0])
