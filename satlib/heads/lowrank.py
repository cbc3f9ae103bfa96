"""Rank-constrained LM heads and how they are trained on frozen features (methods layer; paper §5.1, Appendix B.1).

The paper freezes a trained model, replaces its head by ``W = A B`` of inner rank r (A: V x r, B: r x d), trains
only A and B, and finds that performance degrades as soon as r falls below about 1,000 even for backbones much
wider than that: the head, not the backbone, is the bottleneck. The forward pass of such a head is two small
matrix products, never the V x d product::

    logits = (h @ B.T) @ A.T        # h: (N, d) -> (N, r) -> (N, V)

:func:`fit_head` trains any head (this one, a mixture, a linear head) on cached features with Adam, a warm-up and
cosine decay; :func:`search_learning_rate` picks its peak rate on a validation sample, widening the grid while the
best rate sits at its edge, and scores the chosen head on a separate test sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from satlib.errors import ConfigurationError
from satlib.specs import HeadTraining

Split = tuple[torch.Tensor, torch.Tensor]  # (N, d) features and (N,) next-token targets

#: Rows a head is applied to at a time when it is evaluated or timed: blocks of logits that stay in cache (SmolLM2's
#: mixtures evaluate twice as fast as with 4,096 rows).
EVALUATION_ROWS = 128


class HeadFactors(NamedTuple):
    """The thin SVD ``W = U diag(S) Vt`` of a (V, d) head in float64: U (V, k), S (k,), Vt (k, d), k = min(V, d)."""

    u: torch.Tensor
    s: torch.Tensor
    vt: torch.Tensor


def head_factors(weight: torch.Tensor) -> HeadFactors:
    """The float64 thin SVD of a (V, d) head (seconds for SmolLM2's 49,152 x 576: computed once per experiment)."""
    return HeadFactors(*torch.linalg.svd(weight.detach().double(), full_matrices=False))


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
