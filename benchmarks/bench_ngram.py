"""Benchmark: the W-error curve of an n-gram matrix from its sparse entries (satlib.ngram) against the dense SVD
of the same matrix (numpy.linalg.svd), same data, same process.

Run: ``.venv/bin/python benchmarks/bench_ngram.py``. The matrix: 5-gram next-token distributions of the 3,000
most frequent contexts of the corpus under the 4,096-token BPE (3,000 x 4,096, small enough for the dense SVD).
Prints both times, their ratio, and the largest difference between the curves (the script exits non-zero if it
exceeds 1e-6).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from satlib import metrics, ngram


def main() -> int:
    ids, vocab_size = ngram.corpus_token_ids("bpe-4096")
    matrix = ngram.ngram_matrix(ids, n=5, vocab_size=vocab_size, max_contexts=3000).matrix

    timings, curves = {}, {}
    for method in ("gram", "svds"):
        start = time.perf_counter()
        curves[method] = ngram.sparse_w_error_curve(matrix, d_max=500 if method == "svds" else None, method=method)
        timings[method] = time.perf_counter() - start
    start = time.perf_counter()
    dense = metrics.w_error_curve(np.linalg.svd(matrix.toarray(), compute_uv=False))
    timings["dense"] = time.perf_counter() - start

    print(f"matrix: {matrix.shape[0]} contexts x {matrix.shape[1]} tokens, {matrix.nnz} non-zeros")
    print(f"dense numpy SVD, whole curve:    {timings['dense']:7.2f} s")
    print(f"satlib gram, whole curve:        {timings['gram']:7.2f} s  ({timings['dense'] / timings['gram']:.1f}x)")
    print(f"satlib svds, curve up to d=500:  {timings['svds']:7.2f} s  ({timings['dense'] / timings['svds']:.1f}x)")
    difference = max(float(np.max(np.abs(curves["gram"] - dense))),
                     float(np.max(np.abs(curves["svds"] - dense[:501]))))  # fmt: skip
    print(f"largest difference from the dense curve: {difference:.2e}")
    return 0 if difference < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
