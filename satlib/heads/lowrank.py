"""Rank-constrained LM heads and how they are trained on frozen features (methods layer; paper §5.1, Appendix B.1).

The paper freezes a trained model, replaces its head by ``W = A B`` of inner rank r (A: V x r, B: r x d), trains
only A and B, and finds that performance degrades as soon as r falls below about 1,000 even for backbones much
wider than that: the head, not the backbone, is the bottleneck. The forward pass of such a head is two small
matrix products, never the V x d product::

    logits = (h @ B.T) @ A.T        # h: (N, d) -> (N, r) -> (N, V)

:func:`fit_head` trains any head (this one, a mixture, a linear head) on cached features with Adam, a warm-up and
cosine decay; :func:`search_learning_rate` picks its peak rate on a validation sample, widening the grid while the
best rate sits at its edge, and scores the chosen head on a separate test sample. :func:`truncation_losses` scores
the backbone's own head truncated in two metrics: its entries' (the plain SVD) and its logits'
(:func:`covariance_factors`, the SVD weighted by the second moment of the hidden states).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from satlib.claims import CLAIMS, MOST_OF_THE_GAP
from satlib.errors import ConfigurationError
from satlib.specs import HeadTraining
from satlib.verdicts import Claim

Split = tuple[torch.Tensor, torch.Tensor]  # (N, d) features and (N,) next-token targets

#: Rows a head is applied to at a time when it is evaluated or timed: blocks of logits that stay in cache (SmolLM2's
#: mixtures evaluate twice as fast as with 4,096 rows).
EVALUATION_ROWS = 128


class HeadFactors(NamedTuple):
    """Factors ``W = U diag(S) Vt`` of a (V, d) head in float64: U (V, k), S (k,), Vt (k, d), k = min(V, d), ordered
    by S. From :func:`head_factors`, the thin SVD; from :func:`covariance_factors`, the SVD of the head in the metric
    of its logits (Vt's rows then need not be orthonormal). ``LowRankHead.from_head(factors, r)`` keeps the first r."""

    u: torch.Tensor
    s: torch.Tensor
    vt: torch.Tensor


def head_factors(weight: torch.Tensor) -> HeadFactors:
    """The float64 thin SVD of a (V, d) head (seconds for SmolLM2's 49,152 x 576: computed once per experiment)."""
    return HeadFactors(*torch.linalg.svd(weight.detach().double(), full_matrices=False))


def covariance_factors(weight: torch.Tensor, features: torch.Tensor, floor: float = 1e-10) -> HeadFactors:
    """Factors of a (V, d) head ordered by what each direction adds to its logits on ``features`` (N, d), the
    covariance-weighted SVD (the plain truncation of :func:`head_factors` minimises the error of the head's entries,
    Eckart–Young–Mirsky as in paper §5.1 and Figure 8; this one the error of the logits ``h Wᵀ`` the loss reads).

    With Σ = Hᵀ H / N the features' second moment (uncentred: logits are linear in h, with no bias) and C = Σ^½
    (symmetric eigendecomposition; eigenvalues below ``floor`` times the largest are raised to that level, so that
    C is invertible), the logit error of any head W' is ``‖H (W - W')ᵀ‖_F / √N = ‖(W - W') C‖_F``. Its best rank-r
    minimiser is ``W_r = trunc_r(W C) C⁻¹``. With ``U diag(S) Vt`` the thin SVD of W C (V x d), the factors returned
    are ``(U, S, Vt C⁻¹)``: they multiply back to W, ``LowRankHead.from_head(factors, r)`` is W_r, S are the singular
    values of ``H Wᵀ / √N``, and the logit error at rank r is the root of the sum of the squared S beyond r.

    Args:
        weight: the (V, d) head.
        features: (N, d) hidden states the head reads: a training sample, never the sample a head is scored on.
        floor: the smallest eigenvalue of Σ kept, relative to its largest.
    """
    hidden = features.detach().double()
    second_moment = hidden.T @ hidden / hidden.shape[0]  # (d, d)
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)
    eigenvalues = eigenvalues.clamp_min(floor * float(eigenvalues.max()))
    root = (eigenvectors * eigenvalues.sqrt()) @ eigenvectors.T  # C = Σ^½, (d, d)
    inverse_root = (eigenvectors / eigenvalues.sqrt()) @ eigenvectors.T  # C⁻¹
    u, s, vt = torch.linalg.svd(weight.detach().double() @ root, full_matrices=False)
    return HeadFactors(u, s, vt @ inverse_root)


class LowRankHead(torch.nn.Module):
    """A linear LM head constrained to rank r: ``logits = h Bᵀ Aᵀ`` with A (V, r) and B (r, d) (paper §5.1)."""

    def __init__(self, vocab_size: int, width: int, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(vocab_size, width):
            raise ConfigurationError(
                f"rank must be an integer in [1, min(V, d) = {min(vocab_size, width)}], got {rank!r}"
            )
        # Each factor scaled so that logits start with the variance of a standard linear head (std 0.02).
        self.A = torch.nn.Parameter(torch.randn(vocab_size, rank, generator=generator) * math.sqrt(0.02 / rank))
        self.B = torch.nn.Parameter(torch.randn(rank, width, generator=generator) * math.sqrt(0.02))

    @classmethod
    def from_head(cls, weight: torch.Tensor | HeadFactors, rank: int) -> LowRankHead:
        """The best rank-r approximation of a (V, d) head, split as A = U Σ^½, B = Σ^½ Vᵀ (Eckart–Young–Mirsky).

        ``weight`` may be the head's :func:`head_factors` instead, to build heads of several ranks from one SVD.
        """
        u, s, vt = weight if isinstance(weight, HeadFactors) else head_factors(weight)
        head = cls(u.shape[0], vt.shape[1], rank)
        root = s[:rank].sqrt()
        with torch.no_grad():
            head.A.copy_((u[:, :rank] * root).to(head.A.dtype))
            head.B.copy_((root[:, None] * vt[:rank]).to(head.B.dtype))
        return head

    @property
    def rank(self) -> int:
        return self.A.shape[1]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) hidden states to (..., V) logits, without forming the V x d product."""
        return (hidden @ self.B.T) @ self.A.T

    def weight(self) -> torch.Tensor:
        """The (V, d) matrix A B."""
        return self.A @ self.B


def cosine_rate(peak: float, step: int, steps: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 10% of ``peak``."""
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    fraction = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))


def fit_head(
    head: torch.nn.Module, train: Split, learning_rate: float, training: HeadTraining, seed: int, device: str = "cpu"
) -> torch.nn.Module:
    """Train any head on frozen features with Adam, warm-up and cosine decay (paper Appendix B.1), in the precision
    of ``training`` (mixed bfloat16 by default: the loss and its softmax in float32, but a head that returns
    log-probabilities, such as a mixture, computes them inside the autocast region, in bfloat16).

    The head maps (N, d) features to (N, V) logits or log-probabilities: cross-entropy treats both alike, since the
    log-softmax of log-probabilities is themselves. ``seed`` orders the features (the same order for every head
    trained with it).
    """
    features, targets = train
    generator = torch.Generator().manual_seed(seed)
    head = head.to(device)
    mixed = training.precision == "bfloat16"
    # fused: one kernel per step instead of a dozen passes over the weights (ten times faster for 28M on a CPU)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, betas=(0.9, 0.95), fused=True)
    steps = training.epochs * -(-features.shape[0] // training.batch_tokens)
    step = 0
    for _ in range(training.epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for start in range(0, features.shape[0], training.batch_tokens):
            picked = order[start : start + training.batch_tokens]
            for group in optimizer.param_groups:
                group["lr"] = cosine_rate(learning_rate, step, steps, training.warmup_fraction)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=mixed):
                outputs = head(features[picked].to(device))
            loss = torch.nn.functional.cross_entropy(outputs.float(), targets[picked].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return head.eval()


@torch.no_grad()
def evaluate_head(
    head: torch.nn.Module | torch.Tensor, split: Split, batch_tokens: int = EVALUATION_ROWS
) -> tuple[float, float]:
    """Mean next-token loss (nats) and accuracy of a head (a module, or a (V, d) weight) on cached features,
    ``batch_tokens`` rows at a time."""
    features, targets = split
    device = head.device if isinstance(head, torch.Tensor) else next(head.parameters()).device
    apply = (lambda h: h @ head.T) if isinstance(head, torch.Tensor) else head
    total, correct = 0.0, 0
    for start in range(0, features.shape[0], batch_tokens):
        logits = apply(features[start : start + batch_tokens].to(device)).float()
        expected = targets[start : start + batch_tokens].to(device)
        total += float(torch.nn.functional.cross_entropy(logits, expected, reduction="sum"))
        correct += int((logits.argmax(-1) == expected).sum())
    return total / features.shape[0], correct / features.shape[0]


def search_learning_rate(
    build: Callable[[torch.Generator], torch.nn.Module],
    train: Split,
    validation: Split,
    test: Split,
    learning_rates: tuple[float, ...],
    training: HeadTraining,
    seed: int,
    max_extensions: int = 2,
    device: str = "cpu",
) -> tuple[pd.DataFrame, torch.nn.Module]:
    """Train a head at every rate of a grid; keep the rate with the lowest *validation* loss, report *test* loss.

    While the best rate is the smallest or the largest of the grid, one more rate beyond it (the grid's own ratio)
    is tried, up to ``max_extensions`` times: a choice at an edge says nothing about the rates beyond it.

    Args:
        build: makes a fresh head from a generator seeded with ``seed`` (the same start for every rate).
        train, validation, test: cached (features, targets).
        learning_rates: the starting grid (at least two rates for the edge rule to apply).

    Returns:
        One row per rate tried (``learning_rate``, ``validation_loss``, ``chosen``, ``at_edge``: the chosen rate is
        still an edge of the final grid; ``test_loss`` and ``test_accuracy`` of the chosen head, NaN for the
        others: the test sample scores only what validation chose), and the chosen head.
    """
    rates = sorted(set(learning_rates))
    ratio = (rates[-1] / rates[0]) ** (1 / (len(rates) - 1)) if len(rates) > 1 else 1.0
    rows: dict[float, dict] = {}
    kept: dict[str, object] = {"rate": None, "head": None}  # only the best head so far is kept in memory

    def attempt(rate: float) -> None:
        head = fit_head(build(torch.Generator().manual_seed(seed)), train, rate, training, seed, device)
        validation_loss, _ = evaluate_head(head, validation)
        rows[rate] = {"learning_rate": rate, "validation_loss": validation_loss}
        if kept["rate"] is None or validation_loss < rows[kept["rate"]]["validation_loss"]:
            kept.update(rate=rate, head=head)  # on the device until the test sample has scored it

    for rate in rates:
        attempt(rate)
    for _ in range(max_extensions if ratio > 1 else 0):
        grid, best = sorted(rows), kept["rate"]
        if best not in (grid[0], grid[-1]):
            break
        attempt(best / ratio if best == grid[0] else best * ratio)
    table = pd.DataFrame([rows[rate] for rate in sorted(rows)])
    table["chosen"] = table.learning_rate == kept["rate"]
    test_loss, test_accuracy = evaluate_head(kept["head"], test)  # the test sample scores the chosen head only
    kept["head"] = kept["head"].cpu()
    table["test_loss"] = table.chosen.map({True: test_loss, False: float("nan")})
    table["test_accuracy"] = table.chosen.map({True: test_accuracy, False: float("nan")})
    edges = [table.learning_rate.min(), table.learning_rate.max()]
    table["at_edge"] = table.chosen & (len(table) > 1) & table.learning_rate.isin(edges)
    return table, kept["head"]


def degradation_onset(ranks: list[int], losses: list[float], w_errors: list[float], tolerance: float = 0.02) -> dict:
    """Where a rank-constrained head starts to lose: the largest rank whose loss exceeds the full-rank loss by more
    than ``tolerance`` (relative), and the W-error of the original head at that rank (paper Figure 8).

    Args:
        ranks, losses, w_errors: one entry per trained rank; the largest rank is the reference.

    Returns:
        ``rank``, ``w_error`` and ``relative_loss`` at the onset (None values when no rank degrades).
    """
    order = np.argsort(ranks)[::-1]
    reference = losses[order[0]]
    for index in order:
        relative = losses[index] / reference
        if relative > 1 + tolerance:
            return {"rank": int(ranks[index]), "w_error": float(w_errors[index]), "relative_loss": float(relative)}
    return {"rank": None, "w_error": None, "relative_loss": None}


def truncation_losses(weight: torch.Tensor, train: Split, test: Split, ranks: Sequence[int]) -> pd.DataFrame:
    """A (V, d) head truncated to each rank, untrained, in two metrics (the dashed curves of paper Figure 8, and a
    test of why they lose): its own entries' (:func:`head_factors`) and its logits' on the ``train`` features
    (:func:`covariance_factors`). Two SVDs of the head in all (seconds for SmolLM2's 49,152 x 576).

    Returns:
        One row per rank: ``rank``; ``truncated_loss`` and ``weighted_truncated_loss``, the test loss of the plain
        and of the covariance-weighted truncation; ``logit_error`` and ``weighted_logit_error``, their error on the
        train features' logits relative to the head's, ``‖H (W - W_r)ᵀ‖_F / ‖H Wᵀ‖_F`` (the weighted one is the
        smallest any rank-r head can reach).
    """
    plain, weighted = head_factors(weight), covariance_factors(weight, train[0])
    hidden = train[0].detach().double()
    # ‖H Xᵀ‖² = N tr(Σ XᵀX): the plain tail's energy is Σᵢ sᵢ² vᵢᵀ Σ vᵢ over the dropped directions i (U orthonormal)
    plain_energy = plain.s**2 * ((hidden @ plain.vt.T) ** 2).mean(0)
    weighted_energy = weighted.s**2
    rows = []
    for rank in ranks:
        rows.append(
            {
                "rank": int(rank),
                "truncated_loss": evaluate_head(LowRankHead.from_head(plain, int(rank)), test)[0],
                "weighted_truncated_loss": evaluate_head(LowRankHead.from_head(weighted, int(rank)), test)[0],
                "logit_error": float((plain_energy[rank:].sum() / plain_energy.sum()).sqrt()),
                "weighted_logit_error": float((weighted_energy[rank:].sum() / weighted_energy.sum()).sqrt()),
            }
        )
    return pd.DataFrame(rows)


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _gap_shares(table: pd.DataFrame, full_loss: float, width: int) -> tuple[pd.DataFrame, pd.Series]:
    """The rows of :func:`truncation_losses` below ``width`` where the plain truncation loses against the full head,
    by rank, and the share of that gap the weighted truncation recovers, ``(plain - weighted) / (plain - full)``."""
    rows = table[(table["rank"] < width) & (table.truncated_loss > full_loss)].sort_values("rank")
    return rows, (rows.truncated_loss - rows.weighted_truncated_loss) / (rows.truncated_loss - full_loss)


def truncation_finding(table: pd.DataFrame, full_loss: float, width: int, most: float = MOST_OF_THE_GAP) -> str:
    """One sentence, computed from :func:`truncation_losses` (the truncations behind paper §5.1's Figure 8): does
    truncating a head in the metric of its logits close the gap that the plain truncation opens to the full head
    (``full_loss``, nats)?

    At each rank below ``width`` where the plain truncation loses, the share of the gap recovered is
    ``(plain - weighted) / (plain - full)``. More than ``most`` at every such rank (the criterion of
    ``x-truncation-metric``, :data:`satlib.claims.MOST_OF_THE_GAP`): most of the plain truncation's
    loss comes from truncating in the wrong metric, not from information spread over every direction of the head.
    At most ``most`` at every such rank: that hypothesis survives this test. A mix names the ranks of each.
    """
    rows, shares = _gap_shares(table, full_loss, width)
    if rows.empty:
        return "Truncated to any of these ranks, the head loses nothing against its full rank: there is no gap."
    shares = shares.tolist()
    ranks = [f"r = {rank}" for rank in rows["rank"]]
    sentence = (
        "Truncated in the metric of its logits instead (the SVD of the head weighted by the second moment of the "
        f"hidden states it reads), the same head scores {_listed([f'{x:.2f}' for x in rows.weighted_truncated_loss])}"
        f" nats at {_listed(ranks)} (plain truncation: {_listed([f'{x:.2f}' for x in rows.truncated_loss])}; full "
        f"head: {full_loss:.2f}), recovering {_listed([f'{s:.0%}' if s > 0 else 'none' for s in shares])} of the gap. "
    )
    good = [rank for rank, share in zip(ranks, shares, strict=True) if share > most]
    if len(good) == len(ranks):
        return sentence + (
            "Most of the plain truncation's loss therefore comes from truncating in the wrong metric (the head's "
            "own entries, blind to which directions the hidden states use), not from information spread over all "
            "of the head's directions."
        )
    if not good:
        return sentence + (
            "The hypothesis that the head spreads its information over all of its directions, so that cutting any "
            "of them breaks the calibration of the logits, survives this test."
        )
    bad = [rank for rank in ranks if rank not in good]
    return sentence + (
        f"Truncating in the wrong metric explains most of the loss at {_listed(good)}, not at {_listed(bad)}."
    )


def truncation_claim(table: pd.DataFrame, full_loss: float, width: int, model: str) -> Claim:
    """The ledger record of ``x-truncation-metric`` from :func:`truncation_losses` (paper §5.1, Figure 8's
    truncations): the share of the plain truncation's gap to the full head (``full_loss``) that the weighted
    truncation recovers at each rank below ``width``, judged by :func:`truncation_finding`'s rule."""
    rows, shares = _gap_shares(table, full_loss, width)
    blamed = [int(rank) for rank, share in zip(rows["rank"], shares, strict=True) if share > MOST_OF_THE_GAP]
    if rows.empty:
        finding = "no gap to explain: the plain truncation loses nothing at these ranks"
    elif len(blamed) == len(rows):
        finding = "the metric of the truncation, not spread information, explains most of the loss at every rank"
    elif not blamed:
        finding = "spread information survives: the weighted truncation recovers at most half the gap at every rank"
    else:
        finding = f"the metric explains most of the loss at r = {_listed([str(r) for r in blamed])} only"
    book = "; ".join(f"r = {int(r.rank)}: plain {r.truncated_loss:.2f}, weighted {r.weighted_truncated_loss:.2f} "
                     f"nats ({share:.0%} of the gap to {full_loss:.2f})"
                     for r, share in zip(rows.itertuples(), shares, strict=True))  # fmt: skip
    return CLAIMS["x-truncation-metric"].judge(
        finding, book or "no rank below d loses", f"{model}'s own head, untrained truncations, test sample"
    )


def training_start_phrase(trained: pd.Series, weighted: pd.Series, width: int, tokens: int) -> str:
    """Where the new rank-r heads of a sweep (trained from the plain truncated SVD, losses ``trained`` by rank) end
    against the untrained weighted truncation (``weighted`` by rank), as a sentence (paper Figures 6 and 8): when
    training on ``tokens`` leaves them above it at every rank below ``width``, their curves measure mostly where
    training started, not what the rank allows."""
    ranks = [r for r in trained.index if r < width and r in weighted.index]
    if not ranks:
        return ""
    above = [r for r in ranks if trained[r] > weighted[r]]
    pairs = _listed([f"{trained[r]:.2f} against {weighted[r]:.2f} at r = {r}" for r in ranks])
    if len(above) == len(ranks):
        return (f"The new heads of the sweep start from the plain truncation, and {tokens:,} tokens of training "
                f"leave them above the untrained weighted truncation at every rank ({pairs}): for this backbone, the "
                "curves of Figures 6 and 8 above measure mostly where training started, not what a rank-r head can "
                "reach.")  # fmt: skip
    return (f"The new heads of the sweep, which start from the plain truncation, end below the untrained weighted "
            f"truncation at {len(ranks) - len(above)} of {len(ranks)} ranks ({pairs}).")  # fmt: skip
