"""The gradient bottleneck's methods (chapter 09) against brute-force projections, the random-subspace closed form
and hand-made tables; the rank-cut hook's forward and backward passes."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from satlib import gradient_bottleneck as gb
from satlib.errors import ConfigurationError


def _problem(n=40, d=5, v=60, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=generator, dtype=torch.float64) * scale
    weight = torch.randn(v, d, generator=generator, dtype=torch.float64)
    targets = torch.randint(v, (n,), generator=generator)
    return hidden, weight, targets


def _brute_force(hidden, weight, targets):
    gradient = torch.softmax(hidden @ weight.T, -1) - torch.nn.functional.one_hot(targets, weight.shape[0])
    projector = weight @ torch.linalg.pinv(weight)  # onto the column space of W, (V, V)
    lost = gradient - gradient @ projector  # P_K G: its rows lie in the kernel of Wᵀ
    step = gradient @ weight @ weight.T + hidden @ hidden.T @ gradient
    return {
        "destroyed": float(lost.norm() / gradient.norm()),
        "visible_cosine": float(
            (gradient * (gradient @ projector)).sum() / gradient.norm() / (gradient @ projector).norm()
        ),
        "step_cosine": float((step * gradient).sum() / step.norm() / gradient.norm()),
        "kernel_check": float((lost @ weight).abs().max()),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_split_matches_a_brute_force_projection(seed):
    hidden, weight, targets = _problem(seed=seed)
    split = gb.gradient_split(hidden, weight, targets, chunk=7)  # chunks that do not divide N
    brute = _brute_force(hidden, weight, targets)
    assert brute["kernel_check"] < 1e-10  # the brute force's lost part is really in the kernel
    for key in ("destroyed", "visible_cosine", "step_cosine"):
        assert split[key] == pytest.approx(brute[key], abs=1e-10), key
    assert split["visible_cosine"] ** 2 + split["destroyed"] ** 2 == pytest.approx(1.0)
    assert (split["rank"], split["vocab"], split["batch_tokens"]) == (5, 60, 40)


def test_the_split_is_the_same_in_float32_inputs_and_any_chunk():
    hidden, weight, targets = _problem(n=33)
    whole = gb.gradient_split(hidden, weight, targets, chunk=1000)
    single = gb.gradient_split(hidden.float(), weight.float(), targets, chunk=1)
    assert single["destroyed"] == pytest.approx(whole["destroyed"], rel=1e-5)


def test_a_random_subspace_loses_sqrt_one_minus_d_over_v():
    # Gradients independent of a random head: E[r²] = 1 - D/V exactly, r concentrates at its root.
    generator = torch.Generator().manual_seed(3)
    v, d = 2000, 100
    squares = []
    for _ in range(20):
        gradient = torch.randn(64, v, generator=generator, dtype=torch.float64)
        basis = gb.visible_basis(torch.randn(v, d, generator=generator, dtype=torch.float64))
        squares.append(1 - float((gradient @ basis).square().sum() / gradient.square().sum()))
    assert np.mean(squares) == pytest.approx(1 - d / v, abs=3 * np.std(squares) / math.sqrt(20) + 1e-4)
    assert gb.random_subspace_fraction(d, v) == pytest.approx(math.sqrt(0.95))


def test_a_rank_deficient_head_counts_its_rank():
    hidden, weight, targets = _problem(d=6)
    weight[:, 5] = weight[:, 0]  # rank 5
    split = gb.gradient_split(hidden, weight, targets)
    assert split["rank"] == 5 and split["baseline"] == pytest.approx(math.sqrt(1 - 5 / 60))
    assert split["destroyed"] == pytest.approx(_brute_force(hidden, weight, targets)["destroyed"], abs=1e-10)


def test_a_head_that_spans_everything_destroys_nothing():
    hidden, weight, targets = _problem(d=8, v=8)
    assert gb.gradient_split(hidden, weight, targets)["destroyed"] == pytest.approx(0.0, abs=1e-6)


def test_bad_shapes_and_ranks_are_one_line_errors():
    hidden, weight, targets = _problem()
    with pytest.raises(ConfigurationError, match="hidden \\(N, D\\)"):
        gb.gradient_split(hidden[:, :3], weight, targets)
    with pytest.raises(ConfigurationError, match="0 < dim <= vocab"):
        gb.random_subspace_fraction(70, 60)
    with pytest.raises(ConfigurationError, match="0 < rank <= D"):
        gb.top_right_singular(weight, 6)
    with pytest.raises(ConfigurationError, match="factorised head"):
        gb.FactorisedHead(60, 5, 6)


def test_the_backward_cut_leaves_the_forward_pass_bitwise_and_cuts_the_gradient_to_rank_r():
    torch.manual_seed(0)
    n, d, v, r = 50, 8, 40, 3
    inputs = torch.randn(n, d)
    layer = torch.nn.Linear(d, d)  # a "backbone"
    weight = torch.randn(v, d, requires_grad=True)
    targets = torch.randint(v, (n,))

    def run(cut):
        layer.zero_grad()
        weight.grad = None
        hidden = layer(inputs)
        hidden.retain_grad()
        read = gb.backward_rank_cut(hidden, weight, r) if cut else hidden
        loss = torch.nn.functional.cross_entropy(read @ weight.T, targets)
        loss.backward()
        return loss.detach(), hidden.grad.clone(), layer.weight.grad.clone(), weight.grad.clone()

    plain_loss, plain_hidden, plain_backbone, plain_head = run(False)
    cut_loss, cut_hidden, cut_backbone, cut_head = run(True)
    assert torch.equal(plain_loss, cut_loss)  # forward: bitwise the same
    assert torch.equal(plain_head, cut_head)  # the head still receives its full gradient
    right = torch.linalg.svd(weight.detach())[2][:r].T  # (d, r), the top right singular vectors
    assert torch.allclose(cut_hidden, plain_hidden @ right @ right.T, atol=1e-6)  # = G W_r
    assert torch.linalg.matrix_rank(cut_hidden).item() == r < torch.linalg.matrix_rank(plain_hidden).item()
    outside = torch.eye(d) - right @ right.T
    assert (cut_hidden @ outside).abs().max() < 1e-6  # the backbone's gradient lies in the rank-r subspace
    assert not torch.allclose(cut_backbone, plain_backbone)


def test_the_factorised_head_has_rank_r_and_the_suites_scale():
    head = gb.FactorisedHead(4096, 64, 8, seed=1)
    weight = head.weight.detach()
    assert weight.shape == (4096, 64) and torch.linalg.matrix_rank(weight).item() == 8
    assert float(weight.std()) == pytest.approx(0.02, rel=0.1)
    assert torch.equal(gb.FactorisedHead(4096, 64, 8, seed=1).weight, head.weight)


def _fractions(smol=0.99, drift=0.0):
    rows = [
        {
            "family": "pretrained",
            "model": "smollm2-135m",
            "width": 576,
            "step": 0,
            "destroyed": smol,
            "baseline": 0.994,
            "rank": 576,
            "vocab": 49152,
            "batch_tokens": 2048,
        }
    ]
    for step, r in ((0, 0.992), (1200, 0.992 + drift)):
        rows.append(
            {
                "family": "suite",
                "model": "tiny-d64",
                "width": 64,
                "step": step,
                "destroyed": r,
                "baseline": 0.992,
                "rank": 64,
                "vocab": 4096,
                "batch_tokens": 2048,
            }
        )
    return pd.DataFrame(rows)


def test_final_fractions_read_the_last_checkpoint_and_the_visible_share():
    finals = gb.final_fractions(_fractions(drift=-0.05)).set_index("model")
    assert finals.loc["tiny-d64", "destroyed"] == pytest.approx(0.942)
    assert finals.loc["tiny-d64", "visible share / (D/V)"] == pytest.approx((1 - 0.942**2) / (64 / 4096))
    assert list(finals.family) == ["pretrained", "suite"]


def test_the_destroyed_fraction_record_follows_its_criterion():
    alone = gb.destroyed_claim(_fractions(), "test").verdict
    assert "within the range of the paper" in alone and "D/V alone explains r" in alone
    moved = gb.destroyed_claim(_fractions(drift=-0.05), "test").verdict
    assert "training moves r: tiny-d64 ends -0.050" in moved
    outside = gb.destroyed_claim(_fractions(smol=0.90), "test").verdict
    assert "outside the range of the paper" in outside
    assert "(within" in gb.destroyed_claim(_fractions(smol=0.9949), "test").verdict  # rounds to 99%
    assert "(outside" in gb.destroyed_claim(_fractions(smol=0.9951), "test").verdict
    with pytest.raises(ConfigurationError, match="no pretrained model"):
        gb.destroyed_claim(_fractions().iloc[1:], "test")


def _spam(fixed_large, all_large, cap=1000, small=100, jitter=True, rate=0.01):
    rows = []
    for seed in (1, 2, 3):
        for vocab, pool_is_vocab, steps in ((256, True, small), (4096, False, fixed_large), (4096, True, all_large)):
            reached = None if steps >= cap else steps + (seed if jitter else 0)
            rows.append(
                {
                    "role": "test",
                    "vocab": vocab,
                    "width": 16,
                    "pool": 256 if not pool_is_vocab else vocab,
                    "pool_is_vocab": pool_is_vocab,
                    "rate": rate,
                    "seed": seed,
                    "steps_to_accuracy": reached,
                    "steps_run": cap if reached is None else reached,
                    "final_accuracy": 0.95,
                }
            )
    return pd.DataFrame(rows)


RATES = (0.001, 0.01, 0.03)


def _claim(spam, resolution=1):
    return gb.spamlang_claim(spam, 256, "t", resolution, RATES)


def test_spamlang_costs_put_the_shared_cell_in_both_arms_and_count_the_cap():
    costs = gb.spamlang_costs(_spam(100, 1000), pool=256)
    assert sorted(costs.arm.value_counts().items()) == [("all V", 2), ("fixed pool", 2)]
    capped = costs[(costs.arm == "all V") & (costs.V == 4096)].iloc[0]
    assert capped.steps == [1000, 1000, 1000] and capped.reached == 0


def test_the_spamlang_record_separates_the_confound_from_v():
    assert "the confound (" in _claim(_spam(100, 1000)).verdict
    assert "grows with V with the pool of symbols held fixed" in _claim(_spam(600, 1000)).verdict
    assert "no growth" in _claim(_spam(100, 100)).verdict
    growing = _claim(_spam(600, 1000)).verdict
    assert "(5.9 times the steps from V = 256 to 4,096 with the pool fixed, at least 9.8 times with all V" in growing
    assert "(1.0 times" in _claim(_spam(100, 100)).verdict
    record = _claim(_spam(100, 1000), resolution=25)
    assert "steps read every 25 steps; within a width V and V/D grow together" in record.caveats
    assert "1 of 4 cells" in " ".join(record.caveats)


def test_a_growth_of_one_evaluation_with_tied_seeds_is_not_a_growth():
    tied = _spam(125, 125, small=100, jitter=False)  # every seed stops at the same evaluation
    assert "grows with V with the pool" in _claim(tied, resolution=1).verdict  # spread 0: any difference counts
    assert "no growth" in _claim(tied, resolution=25).verdict  # one interval of 25 steps: not beyond it
    assert "grows with V with the pool" in _claim(_spam(150, 150, jitter=False), resolution=25).verdict


def test_a_first_evaluation_or_a_cap_makes_the_growth_factor_a_lower_bound():
    costs = gb.spamlang_costs(_spam(600, 1000, small=10, jitter=False), pool=256)
    assert gb.growth_factor(costs, "fixed pool", 10) == "at least 60.0 times"  # V = 256 reached at the first look
    assert gb.growth_factor(costs, "fixed pool", 5) == "60.0 times"
    assert gb.growth_factor(costs, "all V", 5).startswith("at least")  # capped at the largest V


def test_the_rate_at_the_edge_of_the_grid_is_a_caveat():
    record = _claim(_spam(100, 1000, rate=0.03))
    assert "the chosen rate is the largest searched (0.03) in 4 of 4 cells" in record.caveats
    assert not any("largest searched" in c for c in _claim(_spam(100, 1000)).caveats)


def test_equal_ratio_costs_pair_the_widths_at_a_shared_v_over_d():
    rows = [{"arm": "fixed pool", "V": v, "D": d, "V/D": v / d, "median steps": steps}
            for v, d, steps in ((256, 16, 70), (1024, 16, 80), (1024, 64, 40), (4096, 64, 50))]  # fmt: skip
    table = gb.equal_ratio_costs(pd.DataFrame(rows))
    assert table.index.tolist() == [16.0, 64.0] and table.to_numpy().tolist() == [[70.0, 40.0], [80.0, 50.0]]
    assert (
        gb.equal_ratio_phrase(table)
        == "at the V/D that both widths reach (16, 64), D = 64 needs 0.57 to 0.62 times the steps of D = 16"
    )
    assert gb.equal_ratio_phrase(table.iloc[:0]) == "no V/D is reached by two widths"


def _cut(backward, factorised, ranks=(4,)):
    rows = []
    for seed, jitter in ((1, 0.0), (2, 0.01), (3, -0.01)):
        rows.append({"arm": "full head", "seed": seed, "test_loss": 5.0 + jitter, "width": 32, "rank": None})
        for rank in ranks:
            for arm, loss in (("factorised head", 5.0 + factorised / rank * 4), ("backward cut", 5.0 + backward)):
                rows.append({"arm": arm, "seed": seed, "test_loss": loss + jitter, "width": 32, "rank": rank})
    return pd.DataFrame(rows)


def test_the_rank_cut_record_reads_the_share_of_the_forward_cost_at_every_rank():
    costly = gb.rank_cut_claim(_cut(0.1, 0.4), "t").verdict
    assert "at rank 4 of 32, cutting only the backward pass costs +0.100 nats, 25% of what the factorised" in costly
    assert "(+0.400; the cut ends below the factorised head beyond the spread)" in costly
    free = gb.rank_cut_claim(_cut(0.01, 0.4), "t").verdict
    assert "costs no clear loss" in free
    two = gb.rank_cut_claim(_cut(0.1, 0.4, ranks=(4, 16)), "t")
    assert "at rank 16 of 32, cutting only the backward pass costs +0.100 nats, 100% of" in two.verdict
    assert "backward cut r = 16: 5.100" in two.book_value
    summary = gb.rank_cut_summary(_cut(0.1, 0.4, ranks=(4, 16)))
    assert len(summary) == 5 and summary.iloc[0].arm == "full head"
    assert summary[(summary.arm == "backward cut") & (summary["rank"] == 4)]["versus full head"].item() == "higher"
    assert summary.iloc[0]["seed range"] == pytest.approx(0.02)


def test_the_step_cosine_falls_as_the_batch_outgrows_rank_2d():
    # The step has rank <= 2D while G has rank up to N: the cosine depends on the batch, not only on the head.
    cosines = []
    for n in (32, 512):
        hidden, weight, targets = _problem(n=n, d=8, v=400, seed=5)
        cosines.append(gb.gradient_split(hidden, weight, targets)["step_cosine"])
    assert cosines[0] > cosines[1]
