"""satlib.heads: low-rank heads against Eckart–Young, training on a known low-rank target, selection on validation
and report on test, the mixture and its controls, the pythia code path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import satlib
from satlib import config, evaluate, heads, metrics, presets, specs
from satlib.errors import ConfigurationError
from satlib.heads import features as head_features
from satlib.heads import mixture as mixture_heads


def test_full_rank_from_head_reproduces_the_head():
    weight = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    head = heads.LowRankHead.from_head(weight, 8)
    torch.testing.assert_close(head.weight(), weight, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncated_head_is_eckart_young(rank):
    weight = torch.randn(40, 6, generator=torch.Generator().manual_seed(rank), dtype=torch.float64)
    head = heads.LowRankHead.from_head(weight, rank).double()
    error = torch.linalg.norm(weight - head.weight().detach()) / torch.linalg.norm(weight)
    assert float(error) == pytest.approx(metrics.w_error(metrics.singular_values(weight), rank), abs=1e-6)
    hidden = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(head(hidden), hidden @ head.weight().T)


def test_heads_built_from_one_svd_equal_heads_built_from_the_weight():
    """The rank sweep factors the backbone's head once and starts every rank from those factors."""
    weight = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    factors = heads.head_factors(weight)
    torch.testing.assert_close(factors.u @ torch.diag(factors.s) @ factors.vt, weight.double())
    for rank in (1, 3, 6):
        shared, alone = heads.LowRankHead.from_head(factors, rank), heads.LowRankHead.from_head(weight, rank)
        assert torch.equal(shared.A, alone.A) and torch.equal(shared.B, alone.B)


def test_rank_must_fit():
    with pytest.raises(ConfigurationError, match="rank must be an integer in"):
        heads.LowRankHead(10, 4, 5)
    with pytest.raises(ConfigurationError, match="unknown init"):
        specs.HeadTraining(init="zeros")


def test_evaluate_head_matches_naive_loss_and_accuracy():
    generator = torch.Generator().manual_seed(1)
    features, weight = torch.randn(300, 8, generator=generator), torch.randn(20, 8, generator=generator)
    targets = torch.randint(0, 20, (300,), generator=generator)
    loss, accuracy = heads.evaluate_head(weight, (features, targets), batch_tokens=64)
    logits = features @ weight.T
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5)
    assert accuracy == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    module = heads.LowRankHead.from_head(weight, 8)
    assert heads.evaluate_head(module, (features, targets))[0] == pytest.approx(loss, rel=1e-4)


def synthetic_task(rank: int, seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Targets sampled from softmax(h Wᵀ) with a true head W of the given rank."""
    generator = torch.Generator().manual_seed(seed)
    true_head = 3 * torch.randn(30, rank, generator=generator) @ torch.randn(rank, 10, generator=generator) / rank
    features = torch.randn(6000, 10, generator=generator)
    probabilities = torch.softmax(features @ true_head.T, dim=1)
    return (features, torch.multinomial(probabilities, 1, generator=generator).ravel()), true_head


def split_task(rank: int, seed: int = 0):
    (features, targets), true_head = synthetic_task(rank, seed)
    return (
        (features[:4000], targets[:4000]),
        (features[4000:5000], targets[4000:5000]),
        (features[5000:], targets[5000:]),
        true_head,
    )


def test_training_recovers_a_low_rank_target_and_rank_one_cannot():
    train, validation, test, true_head = split_task(rank=2)
    training = specs.HeadTraining(epochs=8, batch_tokens=250)
    best = {}
    for rank in (1, 2, 10):
        build = lambda generator, r=rank: heads.LowRankHead(30, 10, r, generator)  # noqa: E731
        table, head = heads.search_learning_rate(build, train, validation, test, (3e-3, 3e-2), training, seed=0)
        assert table.chosen.sum() == 1 and table.validation_loss[table.chosen].item() == table.validation_loss.min()
        assert heads.evaluate_head(head, test)[0] == pytest.approx(table.test_loss[table.chosen].item())
        best[rank] = table.test_loss[table.chosen].item()
    optimum = heads.evaluate_head(true_head, test)[0]
    assert best[2] < best[1] - 0.05  # rank 1 cannot express a rank-2 head
    assert best[2] == pytest.approx(optimum, abs=0.05)  # rank 2 reaches the true head's loss
    assert best[10] == pytest.approx(optimum, abs=0.08)


def test_the_rate_is_chosen_on_validation_and_reported_on_test():
    """A validation sample that disagrees with the test sample: the choice follows validation, the report test."""
    train, validation, test, _ = split_task(rank=2, seed=1)
    build = lambda generator: heads.LowRankHead(30, 10, 2, generator)  # noqa: E731
    training = specs.HeadTraining(epochs=2, batch_tokens=250)
    table, _ = heads.search_learning_rate(build, train, validation, test, (1e-3, 1e-2, 1e-1), training, 0, 0)
    shuffled = (validation[0], validation[1][torch.randperm(1000, generator=torch.Generator().manual_seed(0))])
    noisy, head = heads.search_learning_rate(build, train, shuffled, test, (1e-3, 1e-2, 1e-1), training, 0, 0)
    assert noisy.learning_rate[noisy.chosen].item() == noisy.learning_rate[noisy.validation_loss.idxmin()]
    assert noisy.learning_rate[noisy.chosen].item() != table.learning_rate[table.chosen].item()  # a real disagreement
    # The test sample scores the chosen head only, and its score does not depend on the validation sample.
    assert noisy.test_loss[~noisy.chosen].isna().all() and noisy.test_accuracy[~noisy.chosen].isna().all()
    assert noisy.test_loss[noisy.chosen].item() == heads.evaluate_head(head, test)[0]
    alone, _ = heads.search_learning_rate(build, train, validation, test, tuple(noisy.learning_rate[noisy.chosen]),
                                          training, 0, 0)  # fmt: skip
    assert alone.test_loss.item() == noisy.test_loss[noisy.chosen].item()


def test_a_choice_at_the_grid_edge_extends_the_grid():
    train, validation, test, _ = split_task(rank=2)
    build = lambda generator: heads.LowRankHead(30, 10, 2, generator)  # noqa: E731
    training = specs.HeadTraining(epochs=2, batch_tokens=250)
    table, _ = heads.search_learning_rate(build, train, validation, test, (1e-5, 1e-4), training, 0, max_extensions=2)
    assert table.learning_rate.tolist() == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])  # far too small: two steps up
    assert table.chosen.sum() == 1
    fixed, _ = heads.search_learning_rate(build, train, validation, test, (1e-5, 1e-4), training, 0, max_extensions=0)
    assert len(fixed) == 2 and fixed.at_edge.any()  # without extensions the choice stays at the edge, flagged


def small_model() -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32, tie_word_embeddings=False)  # fmt: skip
    return GPTNeoXForCausalLM(config).eval()


def test_backbone_features_are_what_the_head_reads():
    model = small_model()
    windows = torch.randint(0, 64, (5, 9))
    features, targets = heads.backbone_features(model, windows, batch_size=2)
    assert features.shape == (40, 16) and targets.tolist() == windows[:, 1:].reshape(-1).tolist()
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits.reshape(-1, 64)
    torch.testing.assert_close(features @ model.get_output_embeddings().weight.T, logits, atol=1e-5, rtol=1e-5)


def test_spread_windows_cover_the_stream_disjointly():
    ids = np.arange(1000)
    windows = evaluate.spread_windows(ids, context=9, n_tokens=45)
    assert windows.shape == (5, 10)
    assert windows[0, 0] == 0 and windows[-1, 0] > 700  # spread, not only the start
    assert len(set(windows.ravel().tolist())) == windows.numel()
    with pytest.raises(ConfigurationError, match="too few"):
        evaluate.spread_windows(np.arange(30), context=9, n_tokens=40)


def test_pythia_preset_head_experiment_on_a_local_copy(tmp_path, monkeypatch):
    """The pythia preset: a hub model (a local mirror here) on three disjoint parts of a Pile sample (a local JSON
    Lines file); results cached, and the features shared by every experiment on that backbone."""
    from conftest import write_pythia_mirror

    pile = write_pythia_mirror(tmp_path, [("pythia-14m", 143000), ("pythia-410m", 143000)], documents=30)
    monkeypatch.setenv(config.HUB_MIRROR_ENV, str(tmp_path))
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))
    preset = presets.setup("pythia", settings={"head_ranks": [2, 16], "head_learning_rates": [1e-2, 3e-2],
                                               "head_train_tokens": 1024, "head_eval_tokens": 512, "pile_context": 32,
                                               "pile_files": str(pile)})  # fmt: skip
    try:
        table = heads.rank_constrained_heads(preset)
        searched = table[~table.original]
        assert sorted(set(searched["rank"])) == [2, 16] and table.original.sum() == 1
        assert searched.groupby("rank").chosen.sum().eq(1).all()
        assert set(table.model) == {"pythia-410m"} and set(table.width) == {16}
        assert np.all(table[table.chosen].test_loss < np.log(4096) + 0.5) and table.w_error.iloc[-1] == 0.0
        assert table[~table.chosen].test_loss.isna().all()  # unchosen rates are not scored on test
        samples = head_features.experiment_samples(preset.head_experiments[0], preset)
        parts = [evaluate.sample_windows(samples[name], preset) for name in ("train", "validation", "test")]
        assert [p.shape[0] for p in parts] == [32, 16, 16]
        assert not any(torch.equal(parts[0][0], p[0]) for p in parts[1:])  # disjoint samples
        monkeypatch.setattr(head_features, "backbone_features", lambda *args, **kwargs: pytest.fail("features again"))
        monkeypatch.setattr(heads.experiments, "search_learning_rate", lambda *a, **k: pytest.fail("trained again"))
        pd.testing.assert_frame_equal(heads.rank_constrained_heads(preset), table)
        # a new grid with two seeds: the same features, no recompute
        other = dataclasses.replace(preset.head_experiments[0], ranks=(4,), seeds=(0, 1))
        monkeypatch.undo()
        monkeypatch.setattr(head_features, "backbone_features", lambda *args, **kwargs: pytest.fail("features again"))
        monkeypatch.setenv(config.HUB_MIRROR_ENV, str(tmp_path))
        monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))
        seeded = heads.run_rank_experiment(other, preset)
        assert seeded["rank"].tolist()[0] == 4
        first, second = (seeded[seeded.seed == seed] for seed in (0, 1))
        assert len(first) >= 2 and first.tuned.all() and first.chosen.sum() == 1  # the rates searched with seed 0
        assert len(second) == 1 and not second.tuned.any() and second.chosen.all()  # seed 1 trains at its choice
        assert second.learning_rate.item() == first.learning_rate[first.chosen].item()
        assert heads.rank_summary(seeded).set_index("rank").loc[4, ["seeds", "choices"]].tolist() == [2, 1]
    finally:
        presets.setup("tiny")


def test_degradation_onset_on_the_papers_figure_8():
    from satlib.data import paper_values

    figure = paper_values("fig8_werror_vs_loss")
    onset = heads.degradation_onset(figure.d.tolist(), figure.loss.tolist(), figure.w_error.tolist())
    assert onset["rank"] == 1024 and onset["w_error"] == pytest.approx(0.56)  # 2.537 / 2.474 = 1.025
    assert heads.degradation_onset([1, 2], [1.0, 1.0], [0.5, 0.0])["rank"] is None


def test_mixture_of_softmaxes_is_a_distribution_and_trains():
    generator = torch.Generator().manual_seed(3)
    head = heads.MixtureOfSoftmaxes(30, 6, components=3, generator=generator)
    hidden = torch.randn(8, 6, generator=generator)
    log_probs = head(hidden)
    assert log_probs.shape == (8, 30)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(8))
    log_probs[:, 0].sum().backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("residual", [False, True])
def test_mixture_log_probabilities_equal_the_formula_written_out(residual):
    """log sum_k pi_k(h) softmax(W h_k), computed naively in float64 probability space (Yang et al. 2018, Eq. 4)."""
    generator = torch.Generator().manual_seed(5)
    head = heads.MixtureOfSoftmaxes(40, 6, components=3, residual=residual, generator=generator).double()
    hidden = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        prior = torch.softmax(hidden @ head.prior.T, dim=-1)
        expected = torch.zeros(9, 40, dtype=torch.float64)
        for k in range(3):
            context = torch.tanh(hidden @ head.projection[k].T + head.bias[k]) + (hidden if residual else 0)
            expected += prior[:, k : k + 1] * torch.softmax(context @ head.weight.T, dim=-1)
        torch.testing.assert_close(head(hidden), expected.log())


def test_one_component_mixture_is_the_linear_head():
    head = heads.MixtureOfSoftmaxes(20, 5, components=1, projection=False)
    hidden = torch.randn(7, 5)
    torch.testing.assert_close(head(hidden), torch.log_softmax(hidden @ head.weight.T, dim=-1))
    with pytest.raises(ConfigurationError, match="components"):
        heads.MixtureOfSoftmaxes(20, 5, components=0)


def test_mixture_breaks_the_rank_bound_of_a_linear_head():
    """Yang et al. (2018): a linear head's log-probabilities have rank <= d + 1; a mixture's need not."""
    generator = torch.Generator().manual_seed(4)
    width, vocab, contexts = 4, 64, 64
    hidden = 3 * torch.randn(contexts, width, generator=generator, dtype=torch.float64)
    mixture = heads.MixtureOfSoftmaxes(vocab, width, components=4, generator=generator).double()
    with torch.no_grad():
        mixture.weight.mul_(10)  # sharper components: their mixture is further from any single softmax
        log_probs = mixture(hidden)
        linear = torch.log_softmax(hidden @ mixture.weight.T, dim=-1)
    assert metrics.numerical_rank(linear) == width + 1
    assert metrics.numerical_rank(log_probs, rtol=1e-6) > 4 * (width + 1)


def test_mixture_from_head_starts_as_the_linear_head_and_counts_its_cost():
    weight = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    hidden = torch.randn(9, 6)
    linear = torch.log_softmax(hidden @ weight.T, dim=-1)
    for components in (1, 3):
        mixture = heads.MixtureOfSoftmaxes.from_head(weight, components, torch.Generator().manual_seed(0))
        torch.testing.assert_close(mixture(hidden), linear)  # P = 0: every component is the linear head
    assert mixture_heads.parameter_count(heads.MixtureOfSoftmaxes.from_head(weight, 1)) == weight.numel()
    mixture = heads.MixtureOfSoftmaxes(40, 6, components=3, output_width=4)
    naive = 3 * 6 + 3 * 4 * 6 + 3 * 40 * 4  # mixture weights + projections + K softmaxes over V of width d'
    assert mixture.multiply_adds() == naive and mixture(hidden).shape == (9, 40)
    with pytest.raises(ConfigurationError, match="output_width"):
        heads.MixtureOfSoftmaxes(40, 6, components=2, output_width=4, residual=True)


@pytest.mark.parametrize(("vocab", "width", "components"), [(4096, 128, 4), (49152, 576, 2), (50, 8, 3)])
def test_matched_output_width_is_the_widest_mixture_within_the_linear_budget(vocab, width, components):
    matched = heads.matched_output_width(vocab, width, components)
    count = lambda d: mixture_heads.parameter_count(heads.MixtureOfSoftmaxes(vocab, width, components, output_width=d))  # noqa: E731
    assert count(matched) <= vocab * width < count(matched + 1)
    with pytest.raises(ConfigurationError, match="no mixture"):
        heads.matched_output_width(4, 8, 8)


def test_log_probability_rank_of_a_linear_head_is_at_most_d_plus_one():
    generator = torch.Generator().manual_seed(6)
    features = 2 * torch.randn(80, 5, generator=generator)
    linear = heads.MixtureOfSoftmaxes(60, 5, components=1, projection=False, generator=generator)
    mixture = heads.MixtureOfSoftmaxes(60, 5, components=4, generator=generator)
    with torch.no_grad():
        linear.weight.mul_(20)
        mixture.weight.mul_(20)
    for head, bound in ((linear, 6), (mixture, None)):
        sigma = heads.log_probability_spectrum(head, features)
        rank = int(np.sum(sigma > 80 * np.finfo(float).eps * sigma[0]))
        assert sigma.shape == (60,)
        assert rank == bound if bound else rank > 6 * 4


def test_fit_head_trains_a_mixture_towards_a_mixture_target():
    """A two-component target: the mixture fitted by fit_head beats the linear head fitted alike (neither can
    beat the target itself by more than sampling noise)."""
    generator = torch.Generator().manual_seed(7)
    target = heads.MixtureOfSoftmaxes(30, 4, components=2, generator=generator)
    with torch.no_grad():
        target.weight.mul_(150)
        features = 3 * torch.randn(6000, 4, generator=generator)
        targets = torch.multinomial(target(features).exp(), 1, generator=generator).ravel()
    training = specs.HeadTraining(epochs=6, batch_tokens=200)
    losses = {}
    for components, projection in ((1, False), (2, True)):
        head = heads.MixtureOfSoftmaxes(30, 4, components, projection, generator=torch.Generator().manual_seed(0))
        heads.fit_head(head, (features[:5000], targets[:5000]), 3e-2, training, seed=0)
        losses[components] = heads.evaluate_head(head, (features[5000:], targets[5000:]))[0]
    optimum = heads.evaluate_head(target, (features[5000:], targets[5000:]))[0]
    assert losses[2] < losses[1] - 0.05 and min(losses.values()) > optimum - 0.05


def test_mixture_comparison_on_a_local_pythia_copy(tmp_path, monkeypatch):
    """Chapter 07's comparison through the pythia code path (a local mirror): every head at every rate and seed, one
    choice per (head, seed), the linear heads' log-probability rank at d + 1, the residual control, the cache."""
    from conftest import write_pythia_mirror

    pile = write_pythia_mirror(tmp_path, [("pythia-70m", 143000)], documents=40)
    monkeypatch.setenv(config.HUB_MIRROR_ENV, str(tmp_path))
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "cache"))
    preset = presets.setup("pythia", settings={"models": ["pythia-70m"], "head_model": "pythia-70m",
                                               "head_train_tokens": 1024, "head_eval_tokens": 512, "pile_context": 32,
                                               "pile_files": str(pile)})  # fmt: skip
    preset = dataclasses.replace(preset, mixture_experiments=tuple(
        dataclasses.replace(m, seeds=(0, 1), max_extensions=0) for m in preset.mixture_experiments))  # fmt: skip
    try:
        table = heads.expressive_heads(preset)
        assert list(dict.fromkeys(table.comparison)) == ["pythia-70m, from scratch",
                                                         "pythia-70m, fine-tuned from its own head"]  # fmt: skip
        for _, group in table.groupby("comparison"):
            searched = group[group["head"] != "own head"]
            assert searched.groupby(["head", "seed"]).chosen.sum().eq(1).all()
            chosen = group[group.chosen & group.seed.isin([0, -1])].set_index("head")
            assert chosen.loc["linear", "rank"] == chosen.loc["own head", "rank"] == 17  # d + 1 for d = 16
            assert (chosen.rank_contexts == 34).all() and chosen.test_loss.lt(np.log(4096) + 1).all()
        scratch = table[table.comparison.str.endswith("scratch")]
        # Four heads x three rates for the first seed, which searches the rate; the second trains at its choice.
        assert len(scratch) == 4 * 3 + 4 + 1  # and the own head
        assert (scratch[scratch.seed == 1].chosen).all()
        assert "residual control (K=1)" in set(table["head"])
        summary = heads.mixture_summary(table)
        assert set(summary.versus_linear) <= {"", "lower", "higher", "no clear difference"}
        mixtures = summary[summary["head"].str.startswith("MoS")]
        assert mixtures.control.str.endswith("(K=1)").all()  # every mixture is judged against its control
        assert set(mixtures.versus_control) <= {"lower", "higher", "no clear difference"}
        monkeypatch.setattr(heads.experiments, "search_learning_rate", lambda *a, **k: pytest.fail("trained again"))
        pd.testing.assert_frame_equal(heads.expressive_heads(preset), table)
    finally:
        presets.setup("tiny")


def test_residual_control_starts_as_the_linear_head_and_matches_the_mixtures_extra_parameters():
    weight = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    hidden = torch.randn(6, 8)
    control = heads.ResidualControl(weight, 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(control(hidden), torch.log_softmax(hidden @ weight.T, dim=-1))
    mos = heads.MixtureOfSoftmaxes.from_head(weight, 2, torch.Generator().manual_seed(0))
    extra_control = mixture_heads.parameter_count(control) - weight.numel()
    extra_mixture = mixture_heads.parameter_count(mos) - weight.numel()
    assert abs(extra_control - extra_mixture) <= 3 * 8  # 2 d^2 + d against 2 d^2 + 4 d
    assert control.multiply_adds() == 2 * 8 * 8 + 50 * 8


def test_thin_windows_keeps_whole_windows_spread_over_the_sample():
    features, targets = torch.arange(40.0)[:, None], torch.arange(40)
    thinned, kept = mixture_heads.thin_windows(features, targets, context=4, tokens=20)
    assert kept.tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27, 32, 33, 34, 35]
    assert thinned[:, 0].tolist() == kept.tolist()
    assert mixture_heads.thin_windows(features, targets, context=4, tokens=12)[1].tolist() == [
        0,
        1,
        2,
        3,
        16,
        17,
        18,
        19,
        32,
        33,
        34,
        35,
    ]
    assert mixture_heads.thin_windows(features, targets, context=4, tokens=40)[1] is targets
    experiment = specs.MixtureExperiment(presets.TINY_HEADS, 4, (0.01,), train_tokens=10**9)
    assert experiment.tokens == presets.TINY_HEADS.train_tokens  # never more than the backbone's


def _mixture_runs(mixture: list[float], control: list[float], linear: list[float]) -> pd.DataFrame:
    """A made-up fine-tuning comparison: chosen runs of a linear head, its K=1 control and a K=2 mixture."""
    rows = [{"head": head, "seed": seed, "test_loss": loss}
            for head, losses in (("linear", linear), ("residual control (K=1)", control), ("MoS K=2", mixture))
            for seed, loss in enumerate(losses)]  # fmt: skip
    rows.append({"head": "own head", "seed": -1, "test_loss": 4.0})
    table = pd.DataFrame(rows)
    return table.assign(comparison="smollm2-135m, fine-tuned", model="smollm2-135m", chosen=True, parameters=10,
                        multiply_adds=10, seconds_per_token=1.0, rank=3, rank_contexts=9, dimension_99=2,
                        at_edge=False)  # fmt: skip


def test_a_mixture_is_credited_only_when_it_beats_its_control_as_well_as_the_linear_head():
    linear = [3.40, 3.41, 3.39]
    # Mixture and control both beat the linear head by about 0.04; mixing itself adds nothing beyond the spread.
    summary = heads.mixture_summary(_mixture_runs([3.357, 3.366, 3.349], [3.358, 3.365, 3.350], linear))
    mos = summary.set_index("head").loc["MoS K=2"]
    assert mos.versus_linear == "lower" and mos.control == "residual control (K=1)"
    assert mos.versus_control == "no clear difference" and mos.difference_to_control == pytest.approx(-1 / 3000)
    claim = heads.experiments.mixture_claim(summary)
    assert claim.verdict.endswith("MoS helps beyond its control in no comparison")
    assert not claim.caveats  # three seeds each; the own head is one run
    assert "helps (-0.043 nats against linear; no clear difference against the residual control" in claim.book_value
    # A mixture that beats its control on every seed by more than the spread is credited.
    summary = heads.mixture_summary(_mixture_runs([3.30, 3.31, 3.29], [3.358, 3.365, 3.350], linear))
    claim = heads.experiments.mixture_claim(summary)
    assert claim.verdict.endswith("MoS helps beyond its control in MoS K=2 on SmolLM2-135M, fine-tuned")
    assert np.isnan(summary.set_index("head").loc["linear", "difference_to_control"])
    # Without a control, beating the linear head alone credits nothing to mixing.
    no_control = _mixture_runs([3.30, 3.31, 3.29], [3.358, 3.365, 3.350], linear)
    no_control = no_control[no_control["head"] != "residual control (K=1)"]
    claim = heads.experiments.mixture_claim(heads.mixture_summary(no_control))
    assert claim.verdict.endswith("in no comparison") and "helps (-0.100 nats against linear)" in claim.book_value


def _anisotropic_task(seed: int = 0, n: int = 400, vocab: int = 40, width: int = 6):
    """A (V, d) head and (N, d) features whose second moment is far from isotropic (scales 0.1 to 10)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    scales = torch.logspace(-1, 1, width, dtype=torch.float64)
    features = torch.randn(n, width, generator=generator, dtype=torch.float64) * scales @ mixing
    return torch.randn(vocab, width, generator=generator, dtype=torch.float64), features


def _truncated(factors: heads.HeadFactors, rank: int) -> torch.Tensor:
    return factors.u[:, :rank] * factors.s[:rank] @ factors.vt[:rank]


@pytest.mark.parametrize("rank", [1, 2, 4, 5])
def test_covariance_truncation_is_the_best_rank_r_approximation_of_the_logits(rank):
    """Against a naive computation: the truncated SVD of the logit matrix H Wᵀ itself (Eckart–Young on the logits)."""
    weight, features = _anisotropic_task(rank)
    factors = heads.covariance_factors(weight, features)
    torch.testing.assert_close(_truncated(factors, 6), weight)  # the factors multiply back to the head
    logits = features @ weight.T / features.shape[0] ** 0.5  # (N, V), scaled so that its norm is the RMS error's
    u, s, vt = torch.linalg.svd(logits, full_matrices=False)
    torch.testing.assert_close(factors.s, s[:6])  # S are the logits' singular values
    weighted = _truncated(factors, rank)
    torch.testing.assert_close(features @ weighted.T / features.shape[0] ** 0.5, u[:, :rank] * s[:rank] @ vt[:rank])
    error = torch.linalg.norm(features @ (weight - weighted).T) / features.shape[0] ** 0.5
    assert float(error) == pytest.approx(float(s[rank:].square().sum().sqrt()), rel=1e-9)  # the singular values' tail
    plain = _truncated(heads.head_factors(weight), rank)
    assert float(error) < float(torch.linalg.norm(features @ (weight - plain).T)) / features.shape[0] ** 0.5
    module = heads.LowRankHead.from_head(factors, rank)  # the same head as a module (float32 factors A, B)
    torch.testing.assert_close(module.weight().detach().double(), weighted, rtol=1e-4, atol=1e-4)


def test_covariance_truncation_with_isotropic_features_is_the_plain_truncation():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(30, 5, generator=generator, dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(torch.randn(200, 5, generator=generator, dtype=torch.float64))
    features = 3 * 200**0.5 * orthonormal  # Hᵀ H / N = 9 I exactly
    weighted, plain = heads.covariance_factors(weight, features), heads.head_factors(weight)
    torch.testing.assert_close(weighted.s, 3 * plain.s)
    for rank in (1, 3):
        torch.testing.assert_close(_truncated(weighted, rank), _truncated(plain, rank))


def test_covariance_truncation_survives_features_that_miss_a_direction():
    weight, features = _anisotropic_task(4)
    features[:, -1] = 0.0  # a singular second moment: its eigenvalue is raised to the floor, C stays invertible
    factors = heads.covariance_factors(weight, features)
    assert torch.isfinite(factors.vt).all()
    torch.testing.assert_close(_truncated(factors, 6), weight)
    logits = features @ weight.T / features.shape[0] ** 0.5
    torch.testing.assert_close(factors.s[:5], torch.linalg.svdvals(logits)[:5])


def test_truncation_losses_score_both_truncations_and_their_logit_errors():
    weight, features = _anisotropic_task(5)
    weight, features = weight.float(), features.float()
    targets = torch.softmax(features @ weight.T, 1).multinomial(1, generator=torch.Generator().manual_seed(0)).ravel()
    train, test = (features[:300], targets[:300]), (features[300:], targets[300:])
    table = heads.truncation_losses(weight, train, test, [1, 3, 6]).set_index("rank")
    for rank in (1, 3):
        plain = heads.LowRankHead.from_head(weight, rank)
        assert table.truncated_loss[rank] == pytest.approx(heads.evaluate_head(plain, test)[0], rel=1e-6)
        hidden = train[0].double()
        naive = torch.linalg.norm(hidden @ (weight.double() - plain.weight().detach().double()).T)
        relative = float(naive / torch.linalg.norm(hidden @ weight.double().T))
        assert table.logit_error[rank] == pytest.approx(relative, rel=1e-4)
        assert table.weighted_logit_error[rank] < table.logit_error[rank]
    own = heads.evaluate_head(weight, test)[0]
    assert table.loc[6, ["truncated_loss", "weighted_truncated_loss"]].tolist() == pytest.approx([own, own], rel=1e-5)
    assert table.loc[6, ["logit_error", "weighted_logit_error"]].tolist() == pytest.approx([0, 0], abs=1e-6)


def test_the_truncation_finding_follows_the_share_of_the_gap_recovered():
    def finding(weighted: list[float]) -> str:
        table = pd.DataFrame({"rank": [4, 16, 64], "truncated_loss": [9.0, 8.0, 5.0],
                              "weighted_truncated_loss": [*weighted, 5.0]})  # fmt: skip
        return heads.truncation_finding(table, full_loss=5.0, width=64)

    assert finding([8.9, 7.9]).endswith("recovering 2% and 3% of the gap. The hypothesis that the head spreads "
                                        "its information over all of its directions, so that cutting any of them "
                                        "breaks the calibration of the logits, survives this test.")  # fmt: skip
    recovered = finding([6.0, 5.5])  # 75% and 83% of the gap
    assert "scores 6.00 and 5.50 nats at r = 4 and r = 16 (plain truncation: 9.00 and 8.00; full head" in recovered
    assert recovered.endswith("Most of the plain truncation's loss therefore comes from truncating in the wrong "
                              "metric (the head's own entries, blind to which directions the hidden states use), "
                              "not from information spread over all of the head's directions.")  # fmt: skip
    mixed = finding([9.5, 5.5])  # worse than the plain truncation at r = 4
    assert "recovering none and 83% of the gap" in mixed
    assert mixed.endswith("explains most of the loss at r = 16, not at r = 4.")
    no_gap = pd.DataFrame({"rank": [4, 8], "truncated_loss": [5.0, 5.0], "weighted_truncated_loss": [5.0, 5.0]})
    assert "no gap" in heads.truncation_finding(no_gap, full_loss=5.0, width=8)
    half = finding([7.0, 6.5])  # exactly 50% at both ranks: not more than half, so the metric is not blamed
    assert half.endswith("survives this test.")


def test_the_truncation_record_judges_the_same_shares_by_the_ledgers_criterion():
    def claim(weighted: list[float]):
        table = pd.DataFrame({"rank": [4, 16, 64], "truncated_loss": [9.0, 8.0, 5.0],
                              "weighted_truncated_loss": [*weighted, 5.0]})  # fmt: skip
        return heads.truncation_claim(table, full_loss=5.0, width=64, model="m")

    blamed = claim([6.0, 5.5])
    assert blamed.id == "x-truncation-metric" and "explains most of the loss at every rank" in blamed.verdict
    assert blamed.book_value == ("r = 4: plain 9.00, weighted 6.00 nats (75% of the gap to 5.00); "
                                 "r = 16: plain 8.00, weighted 5.50 nats (83% of the gap to 5.00)")  # fmt: skip
    assert "spread information survives" in claim([7.0, 6.5]).verdict  # 50%: not more than half
    assert claim([9.5, 5.5]).verdict.endswith("the metric explains most of the loss at r = 16 only")
    assert f"more than {satlib.claims.MOST_OF_THE_GAP:.0%}" in blamed.criterion


def test_the_training_start_phrase_compares_trained_heads_with_the_weighted_truncation():
    weighted = pd.Series({32: 5.7, 128: 4.6, 576: 3.4})
    above = heads.training_start_phrase(pd.Series({32: 7.0, 128: 6.9, 576: 3.5}), weighted, 576, 8192)
    assert "leave them above the untrained weighted truncation at every rank" in above
    assert "(7.00 against 5.70 at r = 32 and 6.90 against 4.60 at r = 128)" in above and "8,192 tokens" in above
    below = heads.training_start_phrase(pd.Series({32: 7.0, 128: 4.0}), weighted, 576, 8192)
    assert "end below the untrained weighted truncation at 1 of 2 ranks" in below
    assert heads.training_start_phrase(pd.Series({576: 3.5}), weighted, 576, 8192) == ""


def _rank_summary_rows(model: str, width: int, seeds: int, rates: list[float]) -> pd.DataFrame:
    ranks = [width // 4, width // 2, width]
    return pd.DataFrame({"model": model, "width": width, "rank": ranks, "seeds": seeds, "test_loss": [3.3, 3.2, 3.1],
                         "test_loss_spread": 0.01, "relative_loss": [1.06, 1.03, 1.0], "relative_loss_spread": 0.005,
                         "chosen_rate": rates, "at_edge": 0, "w_error": [0.4, 0.2, 0.0]})  # fmt: skip


def test_rank_summary_reports_the_rate_of_the_one_search_per_rank():
    rows = [{"rank": 4, "seed": 0, "learning_rate": r, "chosen": r == 1e-2, "tuned": True} for r in (1e-3, 1e-2)]
    rows.append({"rank": 4, "seed": 1, "learning_rate": 1e-2, "chosen": True, "tuned": False})
    runs = pd.DataFrame(rows).assign(model="m", width=4, original=False, test_loss=3.0, test_accuracy=0.3,
                                     at_edge=False, w_error=0.0, truncated_loss=4.0)  # fmt: skip
    own = {"model": "m", "width": 4, "rank": 4, "seed": -1, "original": True, "chosen": True, "test_loss": 2.5}
    summary = heads.rank_summary(pd.concat([runs, pd.DataFrame([own])], ignore_index=True)).iloc[0]
    assert summary.chosen_rate == 1e-2 and summary.choices == 1 and summary.seeds == 2
    assert "learning_rate" not in summary.index  # one search, no median over seeds to report


def test_figure_9_record_judges_the_first_seeds_search_and_names_the_one_seed_backbones():
    summary = pd.concat([_rank_summary_rows("tiny-d128", 128, 3, [3e-2, 1e-2, 1e-2]),
                         _rank_summary_rows("smollm2-135m", 576, 1, [1e-3, 1e-3, 1e-4])])  # fmt: skip
    onset = {"rank": 1024, "w_error": 0.56}
    claims = heads.experiments.rank_claims(summary, "tiny-d128", {1024: 1.01, 512: 1.03, 2048: 1.0}, onset, 2048)
    figure9 = next(claim for claim in claims if claim.id == "fig9-learning-rates")
    assert figure9.verdict == "reproduced" and "median" not in figure9.criterion + figure9.book_value
    assert "one search per rank" in figure9.criterion and "first seed" in figure9.book_value
    assert figure9.book_value.startswith("tiny-d128: the rate chosen by the one search per rank (first seed) goes")
    assert figure9.caveats == ("one seed at every rank, hence no seed spread: SmolLM2-135M",)
    figure6 = next(claim for claim in claims if claim.id == "fig6-rank-heads")
    assert figure6.paper_value.startswith("Pythia-1B (d = 2,048): 1.010 times the full-rank loss at r = d/2")
    threshold = next(claim for claim in claims if claim.id == "fig6-rank-threshold")
    assert threshold.book_value.startswith("the book's backbones are 128 and 576 wide")
    rising = _rank_summary_rows("tiny-d128", 128, 3, [1e-2, 1e-2, 3e-2])
    claims = heads.experiments.rank_claims(rising, "tiny-d128", {1024: 1.01, 512: 1.03, 2048: 1.0}, onset, 2048)
    assert claims[3].verdict == "not reproduced at this scale" and not claims[3].caveats
