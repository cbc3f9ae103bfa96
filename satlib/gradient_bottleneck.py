"""The LM head as a gradient bottleneck (methods layer; Godey & Artzi 2026, arXiv:2603.10145, beyond the paper).

With logits ``L = H Wᵀ`` (H: N x D hidden states, W: V x D head) and the logit gradient ``G = softmax(L) - Y`` (N x V,
one row per token), the backbone receives ``G W``: only the part of G in the column space of W (D of V
dimensions) reaches it, and the part in the kernel K of ``Wᵀ`` is lost. Chapter 09 measures

* the destroyed fraction ``r = ||P_K G||_F / ||G||_F`` of a batch (:func:`gradient_split`);
* the cosine ``c`` between G and its visible part ``P_W G``, which is ``sqrt(1 - r²)`` by Pythagoras;
* the cosine between ``-G`` and the change of the logits that one gradient step of equal size on the hidden states
  and on the head makes, ``-(G W Wᵀ + H Hᵀ G)``, a matrix of rank at most 2D (the book's reading of the paper's
  "update directions"; the paper's exact definition could not be read offline);
* the baseline of a random D-dimensional subspace of R^V, where ``E[r²] = 1 - D/V`` (:func:`random_subspace_fraction`).

It also holds the two heads of the backward-only experiment: :func:`backward_rank_cut` (the forward pass unchanged,
the backbone's gradient projected on the head's top-r right singular directions) and :class:`FactorisedHead`
(``W = A B`` of rank r, forward and backward limited). The chapter's verdicts are read off the measured tables by
:func:`destroyed_claim`, :func:`spamlang_claim` and :func:`rank_cut_claim`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from satlib.claims import BASELINE_TOLERANCE, CLAIMS
from satlib.errors import ConfigurationError
from satlib.verdicts import Claim, compare


def logit_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token gradient of the cross-entropy with respect to the logits, ``softmax(L) - onehot(y)``.

    Args:
        logits: (N, V). targets: (N,) token ids.

    Returns:
        (N, V), each row summing to zero (not divided by N: every ratio of this module is scale-free).
    """
    gradient = torch.softmax(logits, dim=-1)
    gradient[torch.arange(len(targets)), targets] -= 1.0
    return gradient


def visible_basis(weight: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis (V, k) of the column space of the head W (V, D) in float64: the directions of R^V
    whose logit gradient reaches the backbone (k = rank of W, at most D)."""
    left, singular, _ = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    tolerance = singular.max() * max(weight.shape) * torch.finfo(torch.float64).eps
    return left[:, singular > tolerance]


def random_subspace_fraction(dim: int, vocab: int) -> float:
    """The destroyed fraction of a uniformly random dim-dimensional subspace of R^vocab: E[r²] = 1 - dim/vocab, and r
    concentrates at its square root when vocab is large (the baseline of every measured r)."""
    if not 0 < dim <= vocab:
        raise ConfigurationError(f"a subspace needs 0 < dim <= vocab, got dim={dim}, vocab={vocab}")
    return math.sqrt(1.0 - dim / vocab)


@torch.no_grad()
def gradient_split(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 256
) -> dict[str, float]:
    """How much of a batch's logit gradient the head passes back (Godey & Artzi 2026), in float64, ``chunk`` rows
    at a time (the N x V gradient is never held whole).

    Args:
        hidden: (N, D) final hidden states (what the head reads). weight: (V, D) head. targets: (N,) next tokens.

    Returns:
        ``destroyed`` (r), ``visible_cosine`` (c = sqrt(1 - r²)), ``step_cosine`` (cosine between -G and the logit
        change of one equal gradient step on H and W), ``baseline`` (:func:`random_subspace_fraction` at the rank
        of W), ``rank``, ``vocab``, ``batch_tokens``.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1] or len(targets) != len(hidden):
        raise ConfigurationError(f"gradient_split needs hidden (N, D), weight (V, D), targets (N,); got "
                                 f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")  # fmt: skip
    head = weight.detach().double()
    basis = visible_basis(head)
    head_gram = head.T @ head
    hidden = hidden.detach().double()
    total = visible = through_head = through_head_twice = 0.0
    hidden_times_gradient = torch.zeros_like(head.T)  # (D, V): Hᵀ G
    for start in range(0, len(hidden), chunk):
        rows = hidden[start : start + chunk]
        gradient = logit_gradient(rows @ head.T, targets[start : start + chunk])
        total += float(gradient.square().sum())
        visible += float((gradient @ basis).square().sum())
        passed = gradient @ head  # what the backbone receives, G W
        through_head += float(passed.square().sum())
        through_head_twice += float(((passed @ head_gram) * passed).sum())  # ||G W Wᵀ||²
        hidden_times_gradient += rows.T @ gradient
    hidden_gram = hidden.T @ hidden
    # ||H Hᵀ G||² and <G W Wᵀ, H Hᵀ G> = ||Hᵀ G W||², so the N x V step is never formed.
    through_hidden_twice = float((hidden_times_gradient * (hidden_gram @ hidden_times_gradient)).sum())
    cross = float((hidden_times_gradient @ head).square().sum())
    aligned = through_head + float(hidden_times_gradient.square().sum())  # <G W Wᵀ + H Hᵀ G, G>
    step_norm = math.sqrt(max(through_head_twice + through_hidden_twice + 2 * cross, 0.0))
    return {
        "destroyed": math.sqrt(max(0.0, 1.0 - visible / total)),
        "visible_cosine": math.sqrt(visible / total),
        "step_cosine": aligned / (step_norm * math.sqrt(total)),
        "baseline": random_subspace_fraction(basis.shape[1], head.shape[0]),
        "rank": int(basis.shape[1]),
        "vocab": int(head.shape[0]),
        "batch_tokens": len(hidden),
    }


def top_right_singular(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The head's top-``rank`` right singular vectors (D, rank), from the D x D Gram matrix (cheap when V >> D)."""
    if not 0 < rank <= weight.shape[1]:
        raise ConfigurationError(f"a rank cut needs 0 < rank <= D = {weight.shape[1]}, got {rank}")
    _, vectors = torch.linalg.eigh(weight.detach().T @ weight.detach())  # ascending eigenvalues
    return vectors[:, -rank:].flip(-1)


class _ProjectedBackward(torch.autograd.Function):
    """Identity forward; backward keeps only the gradient's component in span(basis)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(basis)
        return hidden.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001
        (basis,) = ctx.saved_tensors
        return (grad @ basis) @ basis.T, None


def backward_rank_cut(hidden: torch.Tensor, weight: torch.Tensor, rank: int) -> torch.Tensor:
    """The hidden states, unchanged, whose gradient into the backbone is cut to rank ``rank``: ``G W`` becomes
    ``G W V_r V_rᵀ = G W_r`` with W_r the best rank-r approximation of the head (the head itself still receives
    its full gradient). The forward pass is bitwise the same as without the cut.

    Args:
        hidden: (..., D) what the head reads. weight: (V, D) the head. rank: r < D keeps r directions.
    """
    return _ProjectedBackward.apply(hidden, top_right_singular(weight, rank).to(hidden.dtype))


class FactorisedHead(torch.nn.Module):
    """A head ``W = A B`` of rank r (A: V x r, B: r x D), initialised so that W's entries have standard deviation
    ``std`` like a GPT-NeoX head's: the forward pass and the backward pass are both limited to rank r."""

    def __init__(self, vocab: int, dim: int, rank: int, std: float = 0.02, seed: int = 0) -> None:
        super().__init__()
        if not 0 < rank <= min(vocab, dim):
            raise ConfigurationError(f"a factorised head needs 0 < rank <= min(V, D) = {min(vocab, dim)}, got {rank}")
        generator = torch.Generator().manual_seed(seed)
        factor_std = math.sqrt(std / math.sqrt(rank))  # Var(W_ij) = rank * factor_std⁴ = std²
        self.left = torch.nn.Parameter(torch.randn(vocab, rank, generator=generator) * factor_std)
        self.right = torch.nn.Parameter(torch.randn(rank, dim, generator=generator) * factor_std)

    @property
    def weight(self) -> torch.Tensor:
        """(V, D), of rank at most r."""
        return self.left @ self.right


#: The paper's "95-99%" as a rounded range: the values that round to a whole percent from 95 to 99.
PAPER_RANGE = (0.945, 0.995)


def final_fractions(table: pd.DataFrame) -> pd.DataFrame:
    """The last checkpoint of each model of :func:`satlib.gradient_runs.measured_fractions`, with D/V, the distance
    ``r - baseline`` (positive: more is lost than a random subspace of the same dimension loses) and the squared
    share that reaches the backbone, ``1 - r²``, in units of a random subspace's expected share D/V."""
    finals = table.sort_values("step").groupby("model", sort=False).tail(1)
    share = finals["rank"] / finals.vocab
    finals = finals.assign(**{"D/V": share, "r - baseline": finals.destroyed - finals.baseline,
                              "visible share / (D/V)": (1 - finals.destroyed**2) / share})  # fmt: skip
    order = {"pretrained": 0, "suite": 1, "controlled": 2}
    return finals.sort_values(["family", "width"], key=lambda c: c.map(order) if c.name == "family" else c)


def _in_range(value: float) -> str:
    return "within" if PAPER_RANGE[0] <= value < PAPER_RANGE[1] else "outside"


def destroyed_claim(table: pd.DataFrame, source: str) -> Claim:
    """The ledger record ``x-gradient-destroyed-fraction`` from the measured gradient splits: is SmolLM2's r in the
    paper's rounded range, and is every final r within :data:`satlib.claims.BASELINE_TOLERANCE` of D/V's baseline?"""
    finals = final_fractions(table)
    pretrained = finals[finals.family == "pretrained"]
    if pretrained.empty:
        raise ConfigurationError("the table has no pretrained model: measure SmolLM2-135M (measured_fractions)")
    smol = pretrained.iloc[0]
    furthest = finals.loc[finals["r - baseline"].abs().idxmax()]
    distance = abs(float(furthest["r - baseline"]))
    if distance <= BASELINE_TOLERANCE:
        why = f"every final checkpoint is within {distance:.4f} of its random-subspace baseline: D/V alone explains r"
    else:
        why = (f"training moves r: {furthest.model} ends {float(furthest['r - baseline']):+.3f} from its "
               "random-subspace baseline")  # fmt: skip
    finding = (f"{smol.model} loses {smol.destroyed:.1%} of the norm ({_in_range(smol.destroyed)} the range of the "
               f"paper, as its random-subspace baseline {smol.baseline:.1%} is {_in_range(smol.baseline)} it); "
               f"{why}")  # fmt: skip
    book = "; ".join(f"{row.model} (D/V {row['D/V']:.4f}): r {row.destroyed:.4f}, baseline {row.baseline:.4f}"
                     for _, row in finals.iterrows())  # fmt: skip
    ratio = finals["visible share / (D/V)"]
    caveats = [f"one batch of {int(smol.batch_tokens):,} held-out tokens per checkpoint",
               "the paper's exact definition (per token or per batch, norm or squared norm) could not be read "
               "offline: the book uses the Frobenius ratio per batch",
               f"a tolerance on r hides ratios: the squared share that reaches the backbone is {ratio.min():.2f} to "
               f"{ratio.max():.2f} times D/V ({finals.model.iloc[int(np.argmax(ratio.to_numpy()))]} the "
               "largest)"]  # fmt: skip
    return CLAIMS["x-gradient-destroyed-fraction"].judge(finding, book, source, caveats)


def spamlang_costs(spam: pd.DataFrame, pool: int) -> pd.DataFrame:
    """SpamLang's test runs as one row per (arm, V, D): the rate chosen on validation, each seed's steps to the
    accuracy (a run that never reaches it counts as its cap), and how many seeds reached it. ``arm`` is ``fixed
    pool`` (sequences drawn from ``pool`` symbols whatever V; V = pool belongs to both arms) or ``all V``."""
    test = spam[spam.role == "test"].assign(cost=lambda t: t.steps_to_accuracy.fillna(t.steps_run))
    rows = []
    for arm, chosen in (("fixed pool", test[test["pool"] == pool]), ("all V", test[test.pool_is_vocab.astype(bool)])):
        for (vocab, width), group in chosen.groupby(["vocab", "width"]):
            group = group.sort_values("seed")
            rows.append({"arm": arm, "V": int(vocab), "D": int(width), "V/D": vocab / width,
                         "rate": float(group.rate.iloc[0]), "seeds": group.seed.astype(int).tolist(),
                         "steps": group.cost.astype(int).tolist(), "median steps": float(group.cost.median()),
                         "reached": int(group.steps_to_accuracy.notna().sum()), "runs": len(group),
                         "final accuracy": float(group.final_accuracy.min())})  # fmt: skip
    return pd.DataFrame(rows)


def _growth(costs: pd.DataFrame, arm: str, resolution: int) -> dict[int, object]:
    """Per width: the largest V's steps against the smallest V's, beyond the seed spread and one evaluation."""
    result = {}
    for width, group in costs[costs.arm == arm].groupby("D"):
        group = group.sort_values("V")
        result[int(width)] = compare(group.steps.iloc[-1], group.steps.iloc[0], minimum=resolution)
    return result


def growth_factor(costs: pd.DataFrame, arm: str, resolution: int) -> str:
    """How many times more steps the largest V takes than the smallest, over the widths of one arm (medians of
    seeds); "at least" when a largest-V cell has seeds stopped at the cap or a smallest-V cell reached the accuracy
    at its first evaluation (its true cost is anywhere up to ``resolution``)."""
    factors, censored = [], False
    for _, group in costs[costs.arm == arm].groupby("D"):
        group = group.sort_values("V")
        first, last = group.iloc[0], group.iloc[-1]
        factors.append(last["median steps"] / max(first["median steps"], 1))
        censored |= bool(last.reached < last.runs) or min(first.steps) <= resolution
    span = f"{min(factors):.1f}" if min(factors) == max(factors) else f"{min(factors):.1f} to {max(factors):.1f}"
    return f"{'at least ' if censored else ''}{span} times"


def equal_ratio_costs(costs: pd.DataFrame, arm: str = "fixed pool") -> pd.DataFrame:
    """The cells of one arm at a V/D that two widths share: one row per V/D, the median steps at each width."""
    cells = costs[costs.arm == arm].pivot_table(index="V/D", columns="D", values="median steps")
    return cells.dropna().rename(columns=lambda d: f"median steps, D = {d}")


def equal_ratio_phrase(table: pd.DataFrame) -> str:
    """One sentence on :func:`equal_ratio_costs`: at the V/D both widths reach, how many times the narrower width's
    steps the wider one needs (below 1: the wider is faster at the same V/D, so V/D alone does not set the cost)."""
    if table.empty:
        return "no V/D is reached by two widths"
    narrow, wide = table.columns[0], table.columns[-1]
    ratios = table[wide] / table[narrow]
    values = ", ".join(f"{v:,.0f}" for v in table.index)
    span = f"{ratios.min():.2f}" if ratios.min() == ratios.max() else f"{ratios.min():.2f} to {ratios.max():.2f}"
    narrow_width, wide_width = (column.removeprefix("median steps, ") for column in (narrow, wide))
    return f"at the V/D that both widths reach ({values}), {wide_width} needs {span} times the steps of {narrow_width}"


def spamlang_claim(spam: pd.DataFrame, pool: int, source: str, resolution: int, rates: tuple[float, ...]) -> Claim:
    """The ledger record ``x-spamlang``: does the largest V take more steps than the smallest, beyond the seed
    spread and one evaluation interval (``resolution``; :func:`satlib.verdicts.compare`), in the fixed-pool arm
    (judged) and in the all-V arm (the confound)? ``rates``: the searched grid (a rate at its top is an edge)."""
    costs = spamlang_costs(spam, pool)
    fixed, every = _growth(costs, "fixed pool", resolution), _growth(costs, "all V", resolution)
    grows = [d for d, c in fixed.items() if c.direction == "higher"]
    grows_all = [d for d, c in every.items() if c.direction == "higher"]
    sizes = (f"{growth_factor(costs, 'fixed pool', resolution)} the steps from V = {costs.V.min():,} to "
             f"{costs.V.max():,} with the pool fixed, {growth_factor(costs, 'all V', resolution)} with all V "
             "symbols")  # fmt: skip
    if grows and len(grows) == len(fixed):
        finding = f"difficulty grows with V with the pool of symbols held fixed, at every width ({sizes})"
    elif grows:
        finding = f"difficulty grows with V with the pool held fixed at D = {', '.join(map(str, grows))} only ({sizes})"
    elif grows_all:
        finding = f"difficulty grows with V only when the number of symbols grows with it: the confound ({sizes})"
    else:
        finding = f"no growth of difficulty with V at this scale, in either arm ({sizes})"
    book = "; ".join(_cost_range(costs, arm, width) for arm, table in (("fixed pool", fixed), ("all V", every))
                     for width in table)  # fmt: skip
    censored, edge = costs[costs.reached < costs.runs], int((costs.rate == max(rates)).sum())
    caveats = [f"{len(censored)} of {len(costs)} cells have seeds that never reached the accuracy (counted at the "
               "cap)" if len(censored) else "", "learning rate chosen with one selection seed per cell",
               f"the chosen rate is the largest searched ({max(rates):g}) in {edge} of {len(costs)} cells"
               if edge else "", f"steps read every {resolution} steps; within a width V and V/D grow together",
               "criterion amended after review, before this grid ran: a growth must also exceed one evaluation "
               "interval (the seed spread alone is 0 when every seed stops at the same evaluation)"]  # fmt: skip
    return CLAIMS["x-spamlang"].judge(finding, book, source, caveats)


def _cost_range(costs: pd.DataFrame, arm: str, width: int) -> str:
    cells = costs[(costs.arm == arm) & (costs.D == width)].sort_values("V")
    first, last = cells.iloc[0], cells.iloc[-1]
    return (f"{arm}, D = {width}: median steps {first['median steps']:,.0f} at V = {first.V:,}, "
            f"{last['median steps']:,.0f} at V = {last.V:,}")  # fmt: skip


def rank_cut_summary(cut: pd.DataFrame) -> pd.DataFrame:
    """The rank-cut arms' test losses: one row per arm and rank (the full head once), mean, seed range, the
    difference with the full head, and each backward cut against the factorised head of its rank."""

    def losses(arm: str, rank: float | None = None) -> np.ndarray:
        chosen = cut[(cut.arm == arm) & ((cut["rank"] == rank) if rank else cut["rank"].isna())]
        return chosen.sort_values("seed").test_loss.to_numpy()

    full = losses("full head")
    rows = [{"arm": "full head", "rank": None, "mean test loss": full.mean(), "seed range": float(np.ptp(full)),
             "seeds": len(full), "minus full head": 0.0, "versus full head": "—",
             "versus factorised": "—"}]  # fmt: skip
    for rank in sorted(cut["rank"].dropna().unique()):
        for arm in ("factorised head", "backward cut"):
            values = losses(arm, rank)
            versus = compare(values, losses("factorised head", rank)).direction if arm == "backward cut" else "—"
            rows.append({"arm": arm, "rank": int(rank), "mean test loss": values.mean(),
                         "seed range": float(np.ptp(values)), "seeds": len(values),
                         "minus full head": compare(values, full).difference,
                         "versus full head": compare(values, full).direction, "versus factorised": versus})  # fmt: skip
    return pd.DataFrame(rows)


#: How the backward cut's test loss compares with the factorised head's of the same rank, in words.
AGAINST_FACTORISED = {"lower": "the cut ends below the factorised head beyond the spread",
                      "higher": "the cut ends above the factorised head beyond the spread",
                      "no clear difference": "no clear difference from the factorised head"}  # fmt: skip


def rank_cut_claim(cut: pd.DataFrame, source: str) -> Claim:
    """The ledger record ``x-backward-rank-cut``: at each rank, does cutting only the backward pass cost loss, and
    how much of the factorised head's cost does it reproduce?"""
    summary = rank_cut_summary(cut)
    width, parts = int(cut.width.iloc[0]), []
    for rank, group in summary.dropna(subset=["rank"]).groupby("rank"):
        backward, factorised = (group[group.arm == arm].iloc[0] for arm in ("backward cut", "factorised head"))
        if backward["versus full head"] == "higher":
            share = backward["minus full head"] / factorised["minus full head"]
            parts.append(f"at rank {int(rank)} of {width}, cutting only the backward pass costs "
                         f"{backward['minus full head']:+.3f} nats, {share:.0%} of what the factorised head costs "
                         f"({factorised['minus full head']:+.3f}; "
                         f"{AGAINST_FACTORISED[backward['versus factorised']]})")  # fmt: skip
        else:
            parts.append(f"at rank {int(rank)} of {width}, cutting only the backward pass costs no clear loss "
                         f"({backward['minus full head']:+.3f} nats); the factorised head costs "
                         f"{factorised['minus full head']:+.3f} ({factorised['versus full head']})")  # fmt: skip
    labels = [arm if pd.isna(rank) else f"{arm} r = {int(rank)}"
              for arm, rank in zip(summary.arm, summary["rank"], strict=True)]  # fmt: skip
    book = "; ".join(f"{label}: {row['mean test loss']:.3f} (range {row['seed range']:.3f})"
                     for label, (_, row) in zip(labels, summary.iterrows(), strict=True))  # fmt: skip
    caveats = [f"{int(summary.seeds.min())} seeds per arm, largest seed range {summary['seed range'].max():.3f} "
               "nats",
               "one learning rate (the suite's) for every arm, not chosen per arm",
               "the cut keeps the head's top right singular directions; another subspace was not tried"]  # fmt: skip
    return CLAIMS["x-backward-rank-cut"].judge("; ".join(parts), book, source, caveats)
