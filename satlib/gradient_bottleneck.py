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
(``W = A B`` of rank r, forward and backward limited).
"""

from __future__ import annotations

import math

import torch

from satlib.errors import ConfigurationError


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
        of W), ``rank``, ``vocab``, ``tokens``.
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
        "tokens": len(hidden),
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
