"""satlib.ngram against hand-counted n-grams and numpy.linalg.svd."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from satlib import dimensionality, metrics, ngram
from satlib.errors import ConfigurationError


def naive_ngram_rows(ids: list[int], n: int) -> dict[tuple[int, ...], dict[int, float]]:
    following: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for i in range(len(ids) - n + 1):
        following[tuple(ids[i : i + n - 1])][ids[i + n - 1]] += 1
    return {c: {t: k / sum(f.values()) for t, k in f.items()} for c, f in following.items()}


def test_hand_counted_trigram_matrix():
    ids = [0, 1, 2, 0, 1, 3, 0, 1, 2]  # context (0, 1) is followed by 2, 3, 2
    result = ngram.ngram_matrix(ids, n=3, vocab_size=5)
    assert result.observed_contexts == 5  # (0,1) (1,2) (2,0) (1,3) (3,0)
    first = result.matrix[0].toarray().ravel()
    assert tuple(result.contexts[0]) == (0, 1) and result.counts[0] == 3
    np.testing.assert_allclose(first, [0, 0, 2 / 3, 1 / 3, 0])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_matrix_matches_naive_counts(n):
    ids = np.random.default_rng(n).integers(0, 7, size=400).tolist()
    result = ngram.ngram_matrix(ids, n=n, vocab_size=7)
    naive = naive_ngram_rows(ids, n)
    assert result.n_contexts == result.observed_contexts == len(naive)
    np.testing.assert_allclose(result.matrix.sum(axis=1), 1.0)
    for row, context in enumerate(result.contexts):
        expected = np.zeros(7)
        for token, probability in naive[tuple(context)].items():
            expected[token] = probability
        np.testing.assert_allclose(result.matrix[row].toarray().ravel(), expected)
    assert np.all(np.diff(result.counts) <= 0)  # most frequent first


def test_max_contexts_keeps_the_most_frequent():
    ids = [1, 2] * 50 + [3, 4, 5]
    result = ngram.ngram_matrix(ids, n=2, max_contexts=2)
    assert result.n_contexts == 2 and result.observed_contexts == 4  # 1, 2, 3, 4 (5 is never followed)
    assert result.counts.tolist() == [50, 50] and result.contexts.ravel().tolist() == [1, 2]
    np.testing.assert_allclose(result.matrix[1].toarray().ravel(), [0, 49 / 50, 0, 1 / 50, 0, 0])


@pytest.mark.parametrize("method", ["gram", "svds"])
@pytest.mark.parametrize("shape", [(30, 50), (60, 20)])
def test_w_error_curve_matches_dense_svd(method, shape):
    rng = np.random.default_rng(sum(shape))
    dense = rng.random(shape) * (rng.random(shape) < 0.2)
    sigma = np.linalg.svd(dense, compute_uv=False)
    expected = metrics.w_error_curve(sigma)
    curve = ngram.sparse_w_error_curve(scipy.sparse.csr_matrix(dense), method=method)
    np.testing.assert_allclose(curve, expected, atol=1e-6)
    partial = ngram.sparse_w_error_curve(scipy.sparse.csr_matrix(dense), d_max=7, method=method)
    np.testing.assert_allclose(partial, expected[:8], atol=1e-6)


def test_leading_values_of_a_real_ngram_matrix():
    ids = np.random.default_rng(3).zipf(1.5, size=3000) % 40
    matrix = ngram.ngram_matrix(ids, n=3, vocab_size=40).matrix
    dense_sigma = np.linalg.svd(matrix.toarray(), compute_uv=False)
    for method in ("gram", "svds", "auto"):
        np.testing.assert_allclose(ngram.leading_singular_values(matrix, 10, method), dense_sigma[:10], atol=1e-6)
    assert ngram.frobenius_norm(matrix) == pytest.approx(np.linalg.norm(matrix.toarray()))


def test_rank_is_bounded_by_contexts():
    ids = np.random.default_rng(4).integers(0, 50, size=5000)
    curve = ngram.sparse_w_error_curve(ngram.ngram_matrix(ids, n=3, vocab_size=50, max_contexts=10).matrix)
    assert curve.shape == (11,) and curve[-1] == pytest.approx(0.0, abs=1e-7)
    assert ngram.dimension_at(curve, 0.0 + 1e-6) <= 10
    assert ngram.dimension_at([1.0, 0.8], 0.5) is None


def test_context_sweep_slices_the_most_frequent_rows():
    ids = np.random.default_rng(5).zipf(1.3, size=4000) % 30
    full = ngram.ngram_matrix(ids, n=3, vocab_size=30)
    sweep = ngram.context_sweep(full, [5, 20, 10**6])
    assert sorted(sweep) == [5, 20, full.n_contexts]
    direct = ngram.ngram_matrix(ids, n=3, vocab_size=30, max_contexts=20).matrix
    np.testing.assert_allclose(sweep[20], ngram.sparse_w_error_curve(direct), atol=1e-9)
    assert len(sweep[5]) == 6 and len(sweep[full.n_contexts]) == 31


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ngram.ngram_matrix([1, 2, 3], n=1), "n must be"),
        (lambda: ngram.ngram_matrix([1, 2], n=3), "too few"),
        (lambda: ngram.ngram_matrix([1, 9, 2], n=2, vocab_size=5), "vocab_size"),
        (lambda: ngram.ngram_matrix([[1, 2]], n=2), "1-D"),
        (lambda: ngram.ngram_matrix([1, 2, 3], n=2, max_contexts=0), "max_contexts"),
        (lambda: ngram.leading_singular_values(np.eye(3), 4), "k must be"),
        (lambda: ngram.leading_singular_values(np.eye(3), 2, "qr"), "unknown method"),
        (lambda: ngram.sparse_w_error_curve(np.eye(3), d_max=0), "d_max"),
    ],
)
def test_bad_input_is_a_one_line_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        dimensionality.corpus_token_ids("gpt2")


def test_corpus_curves_are_cached_and_equal_to_a_direct_computation(tmp_path, monkeypatch):
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path))
    ids = np.random.default_rng(6).zipf(1.3, size=3000) % 50
    calls = []
    monkeypatch.setattr(dimensionality, "corpus_token_ids", lambda tokenizer: calls.append(tokenizer) or (ids, 50))
    monkeypatch.setattr(dimensionality, "corpus_id", lambda: "test-corpus")
    first = dimensionality.corpus_w_error_curves("bpe-4096", [10, 30], n=3)
    again = dimensionality.corpus_w_error_curves("bpe-4096", [10, 30], n=3)
    assert calls == ["bpe-4096"]  # the second call reads the cache
    direct = ngram.sparse_w_error_curve(ngram.ngram_matrix(ids, n=3, vocab_size=50, max_contexts=30).matrix)
    np.testing.assert_allclose(again[30], direct, atol=1e-9)
    np.testing.assert_array_equal(first[10], again[10])


def test_svds_handles_repeated_singular_values():
    """Duplicate one-hot rows give repeated singular values: found with their multiplicities."""
    rng = np.random.default_rng(7)
    one_hot = np.eye(120)[rng.integers(0, 120, size=400)] * rng.choice([1.0, 0.5, 0.25], size=(400, 1))
    dense_sigma = np.linalg.svd(one_hot, compute_uv=False)
    values = ngram.leading_singular_values(scipy.sparse.csr_matrix(one_hot), 90, "svds")
    np.testing.assert_allclose(values, dense_sigma[:90], atol=1e-6)


def test_svds_agrees_with_the_gram_method_on_the_corpus_matrix():
    """The case that broke ARPACK at its default tolerance (off by 3e-2): the corpus's 5-gram matrix, k = 500."""
    ids, vocab_size = dimensionality.corpus_token_ids("bpe-4096")
    matrix = ngram.ngram_matrix(ids, n=5, vocab_size=vocab_size, max_contexts=3000).matrix
    lanczos = ngram.leading_singular_values(matrix, 500, "svds")
    np.testing.assert_allclose(lanczos, ngram.leading_singular_values(matrix, 500, "gram"), atol=1e-6)


def markov_stream(probabilities: np.ndarray, length: int, seed: int) -> np.ndarray:
    """A token stream from a first-order Markov chain with the given (V, V) transition matrix."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probabilities, axis=1)
    stream = np.empty(length, dtype=np.int64)
    stream[0] = 0
    uniforms = rng.random(length)
    for t in range(1, length):
        stream[t] = min(int(np.searchsorted(cumulative[stream[t - 1]], uniforms[t])), probabilities.shape[0] - 1)
    return stream


def test_noise_floors_match_the_true_sampling_error_of_a_known_matrix():
    """Bigrams of a Markov chain with a known transition matrix P: the measured matrix's true relative error
    ||P̂ - P||_F / ||P̂||_F is what both estimators (analytic, split-half) must recover."""
    rng = np.random.default_rng(0)
    vocab = 40
    probabilities = rng.dirichlet(np.full(vocab, 0.3), size=vocab)
    truths, analytic, split = [], [], []
    for seed in range(6):
        stream = markov_stream(probabilities, 6000, seed)
        measured = ngram.ngram_matrix(stream, n=2, vocab_size=vocab)
        true = probabilities[measured.contexts[:, 0]]
        truths.append(np.linalg.norm(measured.matrix.toarray() - true) / np.linalg.norm(measured.matrix.toarray()))
        analytic.append(ngram.noise_floor(measured))
        first, second = ngram.split_half_matrices(stream, n=2, vocab_size=vocab)
        split.append(ngram.split_half_floor(first, second, measured))
    assert np.mean(analytic) == pytest.approx(np.mean(truths), rel=0.1)
    assert np.mean(split) == pytest.approx(np.mean(truths), rel=0.15)
    assert 0.05 < np.mean(truths) < 0.5  # the test is in a regime where the floor matters


def test_split_halves_partition_the_occurrences():
    stream = np.array([0, 1, 0, 2, 0, 1, 0, 2, 0, 1])
    first, second = ngram.split_half_matrices(stream, n=2, vocab_size=3, max_contexts=1)  # context 0 only
    np.testing.assert_allclose(first.toarray(), [[0, 1, 0]])  # occurrences 0, 2, 4 of context 0: next 1, 1, 1
    np.testing.assert_allclose(second.toarray(), [[0, 0, 1]])  # occurrences 1, 3: next 2, 2
    assert ngram.dimension_above_floor([1.0, 0.5, 0.2, 0.05], 0.1, floor=0.08) is None
    assert ngram.dimension_above_floor([1.0, 0.5, 0.2, 0.05], 0.2, floor=0.08) == 2


def test_width_comparison_places_each_model_against_the_dimensions():
    widths = {"tiny-d16": 16, "tiny-d128": 128, "tiny-d64": 64, "SmolLM2-135M": 576}
    phrase = dimensionality.width_comparison([226, 159, 150], widths)
    assert phrase == (
        "above the hidden sizes of tiny-d16 to tiny-d128 (16 to 128); below the hidden sizes of SmolLM2-135M (576)"
    )
    inside = dimensionality.width_comparison([100, 200], {"a": 150})
    assert inside == "within the range of the hidden sizes of a (150)"
    with pytest.raises(ConfigurationError):
        dimensionality.width_comparison([], widths)


def test_growth_exponents_recover_a_power_law_and_the_phrase_follows_them():
    counts = [250, 500, 1000, 2000]

    def table(slopes: dict[str, tuple[float, float]]) -> pd.DataFrame:  # early slope up to C = 1000, then last
        rows = [{"tokenizer": "z", "C": 250, "d at 0.5": None}]
        for name, (early, last) in slopes.items():
            rows += [{"tokenizer": name, "C": c, "d at 0.5": 3 * c**early} for c in counts[:3]]
            rows.append({"tokenizer": name, "C": 2000, "d at 0.5": 3 * 1000**early * 2**last})
        return pd.DataFrame(rows)

    power_laws = table({"x": (0.5, 0.5), "y": (0.8, 0.8)})
    assert dimensionality.growth_exponents(power_laws) == pytest.approx({"x": 0.5, "y": 0.8})
    assert dimensionality.growth_exponents(power_laws, last=True) == pytest.approx({"x": 0.5, "y": 0.8})
    growing = dimensionality.growth_phrase(power_laws)
    assert "lower bound" in growing and "For x, y," in growing
    assert "as C^0.50 to C^0.80 from C = 250 to 2,000, and as C^0.50 to C^0.80 over the last step" in growing
    flattening = table({"x": (0.5, -0.1), "y": (0.8, 0.8)})  # grows overall, but falls at the last step
    assert dimensionality.growth_exponents(flattening, last=True)["x"] == pytest.approx(-0.1)
    assert "does not keep growing" in dimensionality.growth_phrase(flattening)
    assert "lower bound" not in dimensionality.growth_phrase(flattening).replace("not shown to be a lower bound", "")
    assert "Too few" in dimensionality.growth_phrase(table({}))
