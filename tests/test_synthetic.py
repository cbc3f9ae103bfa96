"""satlib.synthetic: exact quantities against independent formulas, the sampler against them, the floor against
gradient descent, and the one-line errors. Small worlds (V <= 256) keep it to a few seconds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from satlib import metrics
from satlib.bottleneck import BottleneckFloors
from satlib.errors import ConfigurationError, FitError
from satlib.synthetic import SyntheticLanguage

#: Tolerances derived from a sample are this many standard errors (a false alarm about once in 16,000 runs; the
#: seeds are fixed, so a run that passes always passes).
STANDARD_ERRORS = 4.0


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Floors computed here, never read from a cache another run filled."""
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small() -> SyntheticLanguage:
    return SyntheticLanguage(64, 8, zipf=1.0, seed=3, scale=1.5)


@pytest.fixture(scope="module")
def tiny() -> SyntheticLanguage:
    return SyntheticLanguage(16, 4, zipf=1.0, seed=5, scale=1.5, block_length=128)


def token_losses(language: SyntheticLanguage, tokens: np.ndarray) -> np.ndarray:
    return -language.log_probs()[tokens[:-1], tokens[1:]]


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """p-value of Pearson's chi-square of counts against probs, cells of expected count below 5 pooled."""
    expected = probs * counts.sum()
    rare = expected < 5
    observed = np.append(counts[~rare], counts[rare].sum())
    expected = np.append(expected[~rare], expected[rare].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return float(scipy.stats.chisquare(observed, expected).pvalue)


# ------------------------------------------------------------------ the world


@pytest.mark.parametrize("zipf", [0.0, 1.0])
def test_log_probability_ranks_are_the_constructed_rank_plus_the_frequency_and_partition_terms(zipf):
    language = SyntheticLanguage(96, 7, zipf=zipf, seed=1)
    log_probs = language.log_probs()
    assert log_probs.shape == (96, 96) and log_probs.dtype == np.float64
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=1), 1.0, rtol=1e-13)
    bias = int(zipf > 0)
    assert metrics.numerical_rank(language.centred_log_probs(), rtol=1e-9) == 7
    assert metrics.numerical_rank(log_probs - log_probs.mean(axis=1, keepdims=True), rtol=1e-9) == 7 + bias
    assert metrics.numerical_rank(log_probs, rtol=1e-9) == 7 + 1 + bias
    sigma = metrics.singular_values(language.centred_log_probs())
    assert sigma[6] / sigma[0] > 1e-3  # the rank is not a threshold effect: a clean gap after the seventh value
    assert sigma[7] / sigma[0] < 1e-12


def test_the_world_is_determined_by_its_seed():
    first, again, other = (SyntheticLanguage(32, 4, seed=s).log_probs() for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_stationary_distribution_is_stationary_and_agrees_with_power_iteration(small):
    pi, probs = small.stationary(), np.exp(small.log_probs())
    assert pi.sum() == pytest.approx(1.0, abs=1e-14) and np.all(pi > 0)
    np.testing.assert_allclose(pi @ probs, pi, rtol=1e-12)
    power = np.full(64, 1 / 64)
    for _ in range(500):
        power = power @ probs
    np.testing.assert_allclose(power, pi, rtol=1e-10)


def test_entropy_rate_equals_the_joint_minus_the_marginal_entropy(small):
    pi, probs = small.stationary(), np.exp(small.log_probs())
    joint = pi[:, None] * probs  # law of (x_t-1, x_t)
    joint_entropy = -np.sum(joint * np.log(joint))
    assert small.entropy_rate() == pytest.approx(joint_entropy - small.unigram_entropy(), abs=1e-12)
    assert 0 < small.entropy_rate() < small.unigram_entropy() < np.log(64)


@pytest.mark.parametrize("zipf", [0.0, 1.0])
def test_frequencies_follow_the_zipf_law_within_the_fit_standard_error(zipf):
    fit = SyntheticLanguage(256, 16, zipf=zipf, seed=2).frequency_fit()
    assert abs(fit.exponent - zipf) < STANDARD_ERRORS * fit.standard_error
    assert 0 < fit.residual_std < 1


# ------------------------------------------------------------------ sampling


def test_nll_of_a_long_sample_converges_to_the_entropy_rate(small):
    tokens = small.sample(200_000, seed=11)
    losses = token_losses(small, tokens)
    assert small.nll(tokens) == pytest.approx(losses.mean(), abs=1e-12)
    block_means = losses[: len(losses) // 50 * 50].reshape(50, -1).mean(axis=1)  # batch means: the chain mixes fast
    standard_error = block_means.std(ddof=1) / np.sqrt(50)
    assert abs(small.nll(tokens) - small.entropy_rate()) < STANDARD_ERRORS * standard_error
    assert standard_error < 0.01  # the test resolves errors of a few hundredths of a nat


def test_sampled_frequencies_agree_with_the_stationary_distribution(small):
    spacing = small.mixing_steps  # tokens this far apart are independent to MIXING_TOLERANCE
    tokens = small.sample(100_000 * spacing // 8, seed=4)[::spacing]
    assert chi_square_p(np.bincount(tokens, minlength=64), small.stationary()) > 1e-4
    windows = small.batch(0, 4096, 8, seed=2).numpy()
    for position in (0, 8):  # each window starts from pi, so every position is distributed as pi
        assert chi_square_p(np.bincount(windows[:, position], minlength=64), small.stationary()) > 1e-4


def test_block_joins_are_exact_bridges(tiny):
    """With blocks of 128 tokens, a quarter of the stream's transitions are bridged or jump onto the next block's
    anchor: at every position in the block, (previous, next) pairs must follow the stationary joint pi_c P[c, y]
    (independently drawn anchors without the bridge would make the jump's pairs independent)."""
    length, steps = tiny.block_length, tiny.mixing_steps
    assert 1 < steps < length - 1
    # Row r holds positions (r + 1) L - K .. (r + 2) L - K - 1: the bridge, the anchor at column K, then forward steps.
    rows = tiny.sample(length * 4_000, seed=9, start=length - steps).reshape(-1, length)
    joint = (tiny.stationary()[:, None] * np.exp(tiny.log_probs())).ravel()
    for column in range(1, length):
        pairs = rows[:, column - 1] * 16 + rows[:, column]
        assert chi_square_p(np.bincount(pairs, minlength=256), joint) > 1e-5, column
    losses = token_losses(tiny, rows.ravel())[: 3_999 * length].reshape(-1, length).mean(axis=1)
    standard_error = losses.std(ddof=1) / np.sqrt(len(losses))
    assert abs(losses.mean() - tiny.entropy_rate()) < STANDARD_ERRORS * standard_error


def test_sampling_is_deterministic_and_resumes_mid_stream(tiny, small):
    for language in (tiny, small):
        whole = language.sample(2 * language.block_length + 17, seed=7)
        assert whole.dtype == np.int64 and whole.min() >= 0 and whole.max() < language.vocab_size
        np.testing.assert_array_equal(language.sample(len(whole), seed=7), whole)
        for start in (1, language.block_length - 1, 2 * language.block_length + 5):
            np.testing.assert_array_equal(language.sample(12, seed=7, start=start), whole[start : start + 12])
        assert not np.array_equal(language.sample(len(whole), seed=8), whole)
    assert len(small.sample(0, seed=1)) == 0


def test_batches_are_deterministic_per_seed_and_step_and_fresh_across_steps(small):
    first = small.batch(5, 32, 16, seed=1)
    assert first.shape == (32, 17) and first.dtype == torch.int64
    assert torch.equal(small.batch(5, 32, 16, seed=1), first)
    assert not torch.equal(small.batch(6, 32, 16, seed=1), first)
    assert not torch.equal(small.batch(5, 32, 16, seed=2), first)
    stream = small.sample(32 * 17, seed=1)
    assert not np.array_equal(stream, first.numpy().ravel())  # the stream and the batches use different numbers


def test_batch_targets_have_the_entropy_rate_as_expected_loss(small):
    windows = small.batch(0, 20_000, 4, seed=3).numpy()
    window_losses = np.stack([token_losses(small, w) for w in windows]).mean(axis=1)  # independent windows
    standard_error = window_losses.std(ddof=1) / np.sqrt(len(window_losses))
    assert small.nll(windows) == pytest.approx(window_losses.mean(), abs=1e-12)
    assert abs(small.nll(windows) - small.entropy_rate()) < STANDARD_ERRORS * standard_error


# ------------------------------------------------------------------ the bottleneck floor


@pytest.fixture(scope="module")
def floors() -> tuple[SyntheticLanguage, dict[int, float]]:
    language = SyntheticLanguage(48, 6, zipf=1.0, seed=4, scale=1.5)
    return language, {d: language.best_rank_loss(d) for d in range(1, 10)}


def test_floor_is_the_entropy_rate_from_the_rank_on_and_decreases_before(floors):
    language, floor = floors
    entropy_rate = language.entropy_rate()
    for d in (6, 7, 9):
        assert floor[d] == pytest.approx(entropy_rate, abs=1e-10)
    for d in range(1, 6):
        assert floor[d] > floor[d + 1] + 1e-4  # each width below the rank pays a visible price
    assert floor[1] < language.unigram_entropy() - 1e-3  # one dimension of context beats the context-free model
    assert set(language.best_rank_fit(4).start_losses) == {"svd", "weighted svd", "width 2"}
    assert set(language.best_rank_fit(7).start_losses) == {"svd"}  # exact from d = rank on
    table = language.floor_table([9, 2, 4, 2])
    assert list(table.d) == [2, 4, 9]
    np.testing.assert_allclose(table.price, table.floor - entropy_rate)
    assert (table.entropy_rate == entropy_rate).all()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: OpenMP threads only spin
    yield
    torch.set_num_threads(threads)


def test_floor_table_is_computed_once_and_read_back(monkeypatch):
    language = SyntheticLanguage(16, 4, seed=7)
    first = language.floor_table([4, 1, 2])
    monkeypatch.setattr(
        BottleneckFloors, "floor_table", lambda self, widths, layer_norm=False: pytest.fail("computed again")
    )
    again = SyntheticLanguage(16, 4, seed=7).floor_table([1, 2, 4])  # an equal language, the same widths
    pd.testing.assert_frame_equal(again, first)
    with pytest.raises(pytest.fail.Exception, match="computed again"):
        SyntheticLanguage(16, 4, seed=8).floor_table([1, 2, 4])  # another world is another key


def test_floor_table_refuses_floors_that_rise_with_width(monkeypatch):
    language = SyntheticLanguage(16, 4)
    fits = {d: SimpleNamespace(loss=loss) for d, loss in {1: 2.0, 2: 2.1}.items()}
    monkeypatch.setattr(BottleneckFloors, "best_rank_fit", lambda self, d: fits[d])
    with pytest.raises(FitError, match=r"the floor at d = 2 \(2.100000000\) is above the floor at d = 1"):
        language.floor_table([1, 2])


def independent_loss(language: SyntheticLanguage, contexts, head, bias) -> torch.Tensor:
    """sum_c pi_c CE(P[c], softmax(A B^T + b)) by torch's cross-entropy with probability targets, for a stack of
    models: contexts and head (R, V, d), bias (R, V); returns (R,)."""
    vocab = language.vocab_size
    targets = torch.from_numpy(np.exp(language.log_probs())).repeat(len(contexts), 1)
    logits = (contexts @ head.transpose(1, 2) + bias[:, None, :]).reshape(-1, vocab)
    per_context = torch.nn.functional.cross_entropy(logits, targets, reduction="none").reshape(-1, vocab)
    return per_context @ torch.from_numpy(np.array(language.stationary()))


@pytest.mark.parametrize("d", [2, 3])
def test_floor_agrees_with_gradient_descent_in_torch(floors, one_thread, d):
    """Adam on an independent loss, from the fit and from random starts (some of which stop in local minima up to
    3e-3 nats higher at d = 3): none goes below the floor, and the best reaches it."""
    language, _ = floors
    restarts = 4
    fit = language.best_rank_fit(d)
    at_fit = [torch.from_numpy(x)[None] for x in (fit.contexts, fit.head, fit.bias)]
    assert independent_loss(language, *at_fit).item() == pytest.approx(fit.loss, abs=1e-12)
    generator = torch.Generator().manual_seed(0)
    random_starts = [0.3 * torch.randn(restarts, 48, d, generator=generator, dtype=torch.float64) for _ in range(2)]
    random_starts.append(torch.zeros(restarts, 48, dtype=torch.float64))
    # Model 0 starts at the fit, models 1 .. restarts at random; Adam moves each on its own loss.
    parameters = [
        torch.cat([fit_part, random]).requires_grad_() for fit_part, random in zip(at_fit, random_starts, strict=True)
    ]
    optimiser = torch.optim.Adam(parameters, lr=0.1)
    for _ in range(400):
        optimiser.zero_grad()
        independent_loss(language, *parameters).sum().backward()
        optimiser.step()
    descents = independent_loss(language, *parameters).detach().numpy()
    assert descents[0] > fit.loss - 1e-9  # gradient descent from the optimum finds nothing lower nearby
    assert descents[1:].min() > fit.loss - 1e-9  # nor from random starts
    assert descents[1:].min() < fit.loss + 1e-5  # and the best random start reaches the same floor


def layer_norm_student_loss(language: SyntheticLanguage, inputs, gain, shift, head) -> torch.Tensor:
    """The exact expected loss of the last stage of a GPT-NeoX student, for a stack of R students: free pre-norm
    vectors x_c (R, V, d), torch's layer norm (eps 1e-5) with gain and shift (R, d), a bias-free head (R, V, d)."""
    normed = torch.nn.functional.layer_norm(inputs, inputs.shape[-1:], eps=1e-5)
    hidden = normed * gain[:, None, :] + shift[:, None, :]
    zero_bias = torch.zeros(len(inputs), language.vocab_size, dtype=torch.float64)
    return independent_loss(language, hidden, head, zero_bias)


def layer_norm_student_at(fit, d: int, eps: float = 1e-5) -> list[torch.Tensor]:
    """A layer-norm student whose logits are exactly a rank-(d - 1) fit's ``A B^T + 1 b^T``: n_c = s P a_c in the
    mean-zero hyperplane (P an orthonormal basis, s keeping every ||n_c|| below sqrt(d)), pre-norm vectors
    x_c = k_c n_c with k_c = sqrt(eps / (1 - ||n_c||^2 / d)) so that the norm returns n_c, gain 1, shift e (the
    unit vector along ones), and head W = B P^T / s + b e^T. Shapes as :func:`layer_norm_student_loss`, R = 1."""
    ones = np.ones((d, 1)) / np.sqrt(d)
    basis = np.linalg.svd(np.eye(d) - ones @ ones.T)[0][:, : d - 1]  # orthonormal, orthogonal to the ones
    scale = 0.5 * np.sqrt(d) / np.linalg.norm(fit.contexts, axis=1).max()
    normed = scale * fit.contexts @ basis.T
    stretch = np.sqrt(eps / (1 - np.sum(normed**2, axis=1, keepdims=True) / d))
    head = fit.head @ basis.T / scale + fit.bias[:, None] @ ones.T
    parts = (stretch * normed, np.ones(d), ones[:, 0], head)
    return [torch.from_numpy(np.ascontiguousarray(part))[None] for part in parts]


@pytest.mark.parametrize("d", [3, 4])
def test_the_layer_norm_floor_is_the_minimum_of_the_layer_norm_class(floors, one_thread, d):
    """The real last stage of a student (pre-norm vectors, torch's layer norm, a bias-free linear head): a student
    built from the rank-(d - 1) fit has exactly its loss (the floor is reached), and gradient descent from it and
    from random starts finds nothing lower; the random starts end far above the rank-d floor."""
    language, floor = floors
    assert language._floors.layer_norm_loss(d) == floor[d - 1]
    built = layer_norm_student_at(language.best_rank_fit(d - 1), d)
    assert layer_norm_student_loss(language, *built).item() == pytest.approx(floor[d - 1], abs=1e-9)
    restarts, vocab = 3, language.vocab_size
    generator = torch.Generator().manual_seed(1)
    random = [torch.randn(restarts, vocab, d, generator=generator, dtype=torch.float64),
              torch.ones(restarts, d, dtype=torch.float64), torch.zeros(restarts, d, dtype=torch.float64),
              0.3 * torch.randn(restarts, vocab, d, generator=generator, dtype=torch.float64)]  # fmt: skip
    parameters = [torch.cat([b, r]).requires_grad_() for b, r in zip(built, random, strict=True)]
    optimiser = torch.optim.Adam(parameters, lr=0.01)
    for _ in range(800):
        optimiser.zero_grad()
        layer_norm_student_loss(language, *parameters).sum().backward()
        optimiser.step()
    reached = layer_norm_student_loss(language, *parameters).detach().numpy()
    assert reached.min() > floor[d - 1] - 1e-9  # nothing below the class's floor
    assert reached[1:].min() > floor[d] + 0.5 * (floor[d - 1] - floor[d])  # the rank-d floor is out of reach


def test_the_layer_norm_floor_at_width_one_is_the_unigram_entropy(floors):
    language, _ = floors
    assert language._floors.layer_norm_loss(1) == language.unigram_entropy()
    table = language.floor_table([1, 3], layer_norm=True)
    assert list(table.floor_layer_norm) == [language.unigram_entropy(), language.best_rank_loss(2)]
    assert (table.floor_layer_norm >= table.floor).all()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: SyntheticLanguage(16, 17), "rank 17 is above the vocabulary size 16"),
        (lambda: SyntheticLanguage(16, 0), "rank must be at least 1"),
        (lambda: SyntheticLanguage(16, 4, zipf=-0.5), "zipf must be >= 0"),
        (lambda: SyntheticLanguage(16.0, 4), "vocab_size must be an integer"),
        (lambda: SyntheticLanguage(16, 4.5), "rank must be an integer"),
        (lambda: SyntheticLanguage(16, 4, seed=-1), "seed must be at least 0"),
        (lambda: SyntheticLanguage(16, 4, scale=0.0), "scale must be > 0"),
        (lambda: SyntheticLanguage(16, 4).best_rank_loss(0), "d must be at least 1"),
        (lambda: SyntheticLanguage(16, 4).floor_table([2, 0]), "width must be at least 1"),
        (lambda: SyntheticLanguage(16, 4).sample(10, seed=-2), "seed must be at least 0"),
        (lambda: SyntheticLanguage(16, 4).sample(10, seed=0, start=-1), "start must be at least 0"),
        (lambda: SyntheticLanguage(16, 4).sample(10.0, seed=0), "n_tokens must be an integer"),
        (lambda: SyntheticLanguage(16, 4).batch(-1, 4, 8, seed=0), "step must be at least 0"),
        (lambda: SyntheticLanguage(16, 4).batch(0, 0, 8, seed=0), "batch_size must be at least 1"),
        (lambda: SyntheticLanguage(16, 4).nll([3, 16]), r"token ids must lie in \[0, 16\)"),
        (lambda: SyntheticLanguage(16, 4).nll([3]), "N >= 2"),
        (lambda: SyntheticLanguage(16, 4, scale=4.0, block_length=2).sample(5, seed=0), "block_length 2 is not"),
    ],
)
def test_bad_input_is_a_one_line_configuration_error(call, match):
    with pytest.raises(ConfigurationError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_equal_languages_share_their_fitted_floors():
    """A world rebuilt from the same parameters (a chapter's exercise) refits nothing; another world has its own."""
    first, again = SyntheticLanguage(64, 4, 1.0, 3), SyntheticLanguage(64, 4, 1.0, 3)
    assert first is not again and first.best_rank_fit(2) is again.best_rank_fit(2)
    assert SyntheticLanguage(64, 4, 0.0, 3).best_rank_fit(2) is not first.best_rank_fit(2)
