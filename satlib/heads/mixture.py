"""The Mixture of Softmaxes (Yang et al. 2018), the remedy for the softmax bottleneck that paper §6 discusses,
and the heads it is compared with (methods layer).

A linear head's log-probabilities ``log softmax(W h) = W h - logsumexp(W h) 1`` have rank at most d + 1 over any
set of contexts (the softmax bottleneck); a mixture's need not (:func:`log_probability_spectrum` measures it).
:func:`comparison_heads` builds the heads one comparison trains: the linear head, the mixtures, and controls that
add the mixture's non-linearity or extra parameters without its mixing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray

from satlib.errors import ConfigurationError
from satlib.heads.lowrank import EVALUATION_ROWS
from satlib.metrics import singular_values
from satlib.specs import MixtureExperiment


class MixtureOfSoftmaxes(torch.nn.Module):
    """A Mixture of Softmaxes head (Yang et al. 2018), the remedy for the softmax bottleneck the paper discusses (§6).

    ``P(y | h) = sum_k pi_k(h) softmax(W h_k)_y`` with mixture weights ``pi(h) = softmax(W_pi h)`` and component
    contexts ``h_k = tanh(P_k h + b_k)`` (``projection=True``, as Yang et al.), ``h_k = h + tanh(P_k h + b_k)``
    (``residual=True``: with P = 0 it starts as the linear head W, see :meth:`from_head`) or ``h_k = h`` (no
    projection). The output embedding W (V, d') is shared by the components. Its log-probabilities are not
    confined to rank d + 1, unlike a linear head's.

    Args:
        vocab_size: V. width: d (what the head reads). components: K.
        projection: per-component projections P_k (d' x d); with ``False`` and K = 1 this is exactly a linear head.
        output_width: d', the width of W and of the component contexts (default d; narrower to match a linear
            head's parameter count, :func:`matched_output_width`).
        residual: add the projection to h instead of replacing it (needs d' = d).
    """

    def __init__(
        self,
        vocab_size: int,
        width: int,
        components: int,
        projection: bool = True,
        output_width: int | None = None,
        residual: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        output_width = width if output_width is None else output_width
        if components < 1:
            raise ConfigurationError(f"components must be at least 1, got {components}")
        if output_width != width and (residual or not projection):
            raise ConfigurationError(
                f"output_width {output_width} != width {width} needs projection=True, residual=False"
            )
        self.weight = torch.nn.Parameter(torch.randn(vocab_size, output_width, generator=generator) * 0.02)
        # One component needs no mixture weights (the linear head has exactly V x d parameters).
        self.prior = (
            torch.nn.Parameter(torch.randn(components, width, generator=generator) * 0.02) if components > 1 else None
        )
        self.width = width
        self.projection = (
            torch.nn.Parameter(torch.randn(components, output_width, width, generator=generator) / math.sqrt(width))
            if projection
            else None
        )
        self.bias = torch.nn.Parameter(torch.zeros(components, output_width)) if projection else None
        self.components = components
        self.residual = residual

    @classmethod
    def from_head(
        cls, weight: torch.Tensor, components: int, generator: torch.Generator | None = None
    ) -> MixtureOfSoftmaxes:
        """A residual mixture that starts as exactly the linear head ``weight`` (V, d): P_k = 0, so every
        component is ``softmax(W h)``; fine-tuning then separates them (their mixture weights differ per token).
        With K = 1 and no projection, the linear head itself, to fine-tune on the same footing."""
        vocab_size, width = weight.shape
        mixture = (
            cls(vocab_size, width, 1, projection=False)
            if components == 1
            else cls(vocab_size, width, components, residual=True, generator=generator)
        )
        with torch.no_grad():
            mixture.weight.copy_(weight)
            if mixture.projection is not None:
                mixture.projection.zero_()
        return mixture

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, d) hidden states to (N, V) log-probabilities (not logits: the mixture has no single logit vector)."""
        if self.projection is None:
            contexts = hidden.unsqueeze(1).expand(-1, self.components, -1)  # (N, K, d)
        else:
            contexts = torch.tanh(torch.einsum("ked,nd->nke", self.projection, hidden) + self.bias)  # (N, K, d')
            if self.residual:
                contexts = hidden.unsqueeze(1) + contexts
        logits = contexts @ self.weight.T  # (N, K, V)
        if self.prior is None:
            return torch.log_softmax(logits[:, 0], dim=-1)
        # log P = logsumexp_k (log pi_k + z_k - logsumexp(z_k)): fold each component's two scalars into one shift,
        # then add the components pairwise (K passes over N x V instead of a reduction across strided K).
        shift = torch.log_softmax(hidden @ self.prior.T, dim=-1) - torch.logsumexp(logits, dim=-1)  # (N, K)
        log_probs = logits[:, 0] + shift[:, :1]
        for k in range(1, self.components):
            log_probs = torch.logaddexp(log_probs, logits[:, k] + shift[:, k : k + 1])
        return log_probs

    def multiply_adds(self) -> int:
        """Multiply-adds per token of the forward pass: K d (mixture weights, K > 1) + K d' d (projections)
        + K V d' (the component logits)."""
        vocab_size, output_width = self.weight.shape
        prior = self.components * self.width if self.prior is not None else 0
        projections = self.components * output_width * self.width if self.projection is not None else 0
        return prior + projections + self.components * vocab_size * output_width


def matched_output_width(vocab_size: int, width: int, components: int) -> int:
    """The largest d' whose K-component mixture (projections d -> d') has no more parameters than a V x d head.

    Parameters of the mixture: V d' (W) + K d (prior) + K d' d (projections) + K d' (biases).
    """
    output_width = (vocab_size * width - components * width) // (vocab_size + components * width + components)
    if output_width < 1:
        raise ConfigurationError(
            f"no mixture of {components} components fits in a {vocab_size} x {width} head's parameters"
        )
    return output_width


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@torch.no_grad()
def log_probability_spectrum(head: MixtureOfSoftmaxes, features: torch.Tensor) -> NDArray[np.float64]:
    """Singular values of the (N, V) matrix of a head's log-probabilities on N contexts, computed in float64.

    A linear head's ``log softmax(W h) = W h - logsumexp(W h) 1`` has rank at most d + 1 (the softmax bottleneck,
    paper §2 and Yang et al. 2018); a mixture's need not.
    """
    log_probs = copy.deepcopy(head).double().cpu()(features.double())
    return singular_values(log_probs.numpy())


class ResidualControl(torch.nn.Module):
    """A linear head reading ``h + U tanh(P h + b)`` (P: m x d, U: d x m): the extra parameters of a residual mixture
    of two components (about 2 d^2), without the mixing. Starts as exactly the linear head ``weight`` (U = 0), so
    that fine-tuning it separates what the mixture's extra capacity buys from what its mixing buys.

    Returns log-probabilities, like :class:`MixtureOfSoftmaxes`.
    """

    def __init__(self, weight: torch.Tensor, inner: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        width = weight.shape[1]
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.inner = torch.nn.Parameter(torch.randn(inner, width, generator=generator) / math.sqrt(width))
        self.bias = torch.nn.Parameter(torch.zeros(inner))
        self.outer = torch.nn.Parameter(torch.zeros(width, inner))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, d) hidden states to (N, V) log-probabilities."""
        adjusted = hidden + torch.tanh(hidden @ self.inner.T + self.bias) @ self.outer.T
        return torch.log_softmax(adjusted @ self.weight.T, dim=-1)

    def multiply_adds(self) -> int:
        """Multiply-adds per token: 2 m d (the residual block) + V d (the logits)."""
        return 2 * self.inner.numel() + self.weight.numel()


def comparison_heads(
    experiment: MixtureExperiment, vocab_size: int, width: int, own_head: torch.Tensor
) -> dict[str, Callable[[torch.Generator], torch.nn.Module]]:
    """The heads one comparison trains, by label: each a function of a seeded generator that builds a fresh head.

    From scratch: the linear head, a one-component tanh layer (the mixture's non-linearity without mixing), the
    mixture at equal width, and a narrower mixture of matched parameters. From the model's own head: the linear head
    fine-tuned alike, the residual mixture, and :class:`ResidualControl` (its extra parameters without mixing).
    """
    k = experiment.components
    if experiment.warm_start:
        return {
            "linear": lambda generator: MixtureOfSoftmaxes.from_head(own_head, 1),
            f"MoS K={k}": lambda generator: MixtureOfSoftmaxes.from_head(own_head, k, generator),
            "residual control (K=1)": lambda generator: ResidualControl(own_head, width, generator),
        }
    matched = matched_output_width(vocab_size, width, k)
    return {
        "linear": lambda generator: MixtureOfSoftmaxes(vocab_size, width, 1, False, generator=generator),
        "tanh layer (K=1)": lambda generator: MixtureOfSoftmaxes(vocab_size, width, 1, generator=generator),
        f"MoS K={k}": lambda generator: MixtureOfSoftmaxes(vocab_size, width, k, generator=generator),
        f"MoS K={k}, d'={matched}": lambda generator: MixtureOfSoftmaxes(
            vocab_size, width, k, output_width=matched, generator=generator
        ),
    }


def seconds_per_token(head: torch.nn.Module, features: torch.Tensor, repeats: int = 3) -> float:
    """Best of ``repeats`` timed forward passes over ``features`` (:data:`EVALUATION_ROWS` rows at a time, as they
    are evaluated), per token."""
    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, features.shape[0], EVALUATION_ROWS):
                head(features[start : start + EVALUATION_ROWS])
            best = min(best, time.perf_counter() - started)
    return best / features.shape[0]


def thin_windows(
    features: torch.Tensor, targets: torch.Tensor, context: int, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``tokens`` rows of cached (N, d) features and (N,) targets, taken as every k-th window of
    ``context`` rows, so that a smaller sample still covers the whole split the windows were spread over."""
    if tokens >= features.shape[0]:
        return features, targets
    every = -(-features.shape[0] // tokens)
    kept = (torch.arange(features.shape[0]) // context) % every == 0
    return features[kept][:tokens], targets[kept][:tokens]
