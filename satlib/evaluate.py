"""What is measured on one checkpoint, and on which tokens (measurement layer; paper §3 and §4).

The same functions serve every model of the book: the suite on the corpus's validation split, the long runs and
the shapes on their samples, Pythia on a Pile sample, SmolLM2 on the corpus with its own tokenizer. They only need
a ``transformers`` causal LM and (n, context + 1) windows of token ids.

* :func:`heldout_loss` (Figure 1a), :func:`anisotropy_profile` (Figures 2 and 3), :func:`head_singular_values`
  (Figures 4 and 5); :data:`MEASUREMENTS` names them for :mod:`satlib.sweep`, each with the data it reads.
* :func:`sample_windows` turns a :class:`satlib.specs.CorpusSample` or :class:`satlib.specs.PileSample` into
  windows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from satlib.data import pile_sample
from satlib.errors import ConfigurationError
from satlib.gradient_bottleneck import gradient_split
from satlib.metrics import anisotropy_from_unit_sum, frequency_alignment, singular_values
from satlib.models import load, load_tokenizer, model_token_ids
from satlib.presets import Preset, get_preset
from satlib.specs import CorpusSample, PileSample
from satlib.tokenization import token_ids, unigram_log_frequencies

#: Windows (of context + 1 tokens) whose hidden states enter the anisotropy: 32 x 128 = 4,096 tokens in tiny.
ANISOTROPY_WINDOWS = 32


def evaluation_windows(ids: NDArray, context: int, n_tokens: int) -> torch.Tensor:
    """Consecutive non-overlapping windows of ``context + 1`` tokens from the start of ``ids``, shape
    (n, context + 1): enough to score at least ``n_tokens`` predictions (fewer if the ids run out)."""
    ids = np.asarray(ids)
    available = (len(ids) - 1) // (context + 1)
    count = min(available, -(-n_tokens // context))
    if count < 1:
        raise ConfigurationError(f"{len(ids)} tokens are too few for one window of {context + 1}")
    return torch.from_numpy(ids[: count * (context + 1)].astype(np.int64).reshape(count, context + 1))


def spread_windows(ids: NDArray, context: int, n_tokens: int, offset: int = 0) -> torch.Tensor:
    """Windows of ``context + 1`` tokens spread evenly over the whole stream (not only its start), deterministic.

    ``offset`` shifts every window (use different offsets for disjoint samples of one split).
    """
    ids = np.asarray(ids)
    count = -(-n_tokens // context)
    stride = (len(ids) - context - 1 - offset) // max(count, 1)
    if stride < context + 1:
        raise ConfigurationError(f"{len(ids)} tokens are too few for {count} disjoint windows of {context + 1}")
    starts = offset + stride * np.arange(count)
    return torch.from_numpy(np.stack([ids[s : s + context + 1] for s in starts]).astype(np.int64))


def sample_windows(sample: CorpusSample | PileSample, preset: str | Preset = "tiny") -> torch.Tensor:
    """The (n, context + 1) token windows a sample specification names.

    A :class:`CorpusSample` reads a split of the offline corpus with a corpus BPE (``bpe-4096``) or a registry
    model's tokenizer; a :class:`PileSample` streams The Pile (or reads its local file) with the tokenizer of the
    preset's published suite (all Pythia models share one).
    """
    preset = get_preset(preset)
    if isinstance(sample, PileSample):
        tokenizer = load_tokenizer((preset.measured_models or preset.suite_names())[0], preset)  # all share one
        windows = sample.offset + -(-sample.tokens // sample.context)
        local = {"dataset": "json", "data_files": sample.files} if sample.files else {}
        ids = pile_sample(tokenizer, windows * (sample.context + 1), **local)
        return evaluation_windows(ids, sample.context, windows * sample.context)[sample.offset :]
    if sample.tokenizer.startswith("bpe-"):
        ids = token_ids(sample.split, int(sample.tokenizer.removeprefix("bpe-")))
    else:
        ids = model_token_ids(sample.tokenizer, sample.split, preset)
    if sample.layout == "spread":
        return spread_windows(ids, sample.context, sample.tokens)
    return evaluation_windows(ids, sample.context, sample.tokens)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` on (n, context + 1) windows of token ids (Figure 1a)."""
    device = next(model.parameters()).device
    head = model.get_output_embeddings().weight
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(device)
        hidden = model.base_model(input_ids=batch[:, :-1]).last_hidden_state
        logits = hidden.float() @ head.float().T  # float32 logits whatever the model's dtype
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                   reduction="sum")  # fmt: skip
        total += float(losses)
        count += batch[:, 1:].numel()
    return total / count


@torch.no_grad()
def anisotropy_profile(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> NDArray[np.float64]:
    """Anisotropy of the hidden states at every depth, from the embeddings to what the head reads (Figure 2).

    Streams over the windows keeping only a running sum of unit vectors per layer (memory O(layers x d)).
    The last entry is the final hidden state after the final layer norm, the input of the LM head.

    Returns:
        Shape (n_layers + 1,): embeddings, then each layer's output.
    """
    device = next(model.parameters()).device
    sums: list[torch.Tensor] = []
    count = 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size, :-1].to(device)
        outputs = model.base_model(input_ids=batch, output_hidden_states=True)
        states = [*outputs.hidden_states[:-1], outputs.last_hidden_state]
        units = [torch.nn.functional.normalize(h.reshape(-1, h.shape[-1]).double(), dim=-1).sum(0) for h in states]
        sums = units if not sums else [a + b for a, b in zip(sums, units, strict=True)]
        count += batch.numel()
    return np.array([anisotropy_from_unit_sum(total.cpu().numpy(), count) for total in sums])


def head_singular_values(model: torch.nn.Module) -> NDArray[np.float64]:
    """Singular values of the model's output head (V, d), in decreasing order (paper §4.2, Figures 4 and 5)."""
    return singular_values(model.get_output_embeddings().weight)


@dataclass(frozen=True)
class Measurement:
    """One measurement of a checkpoint: ``compute(model, windows)`` on the windows called ``data`` (None: none)."""

    compute: Callable[[torch.nn.Module, torch.Tensor | None], object]
    data: str | None


#: Windows whose logit gradient one gradient-bottleneck measurement splits (one batch, as the papers measure it).
GRADIENT_WINDOWS = 16


@torch.no_grad()
def gradient_bottleneck(model: torch.nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """The destroyed fraction and cosines of one batch of ``GRADIENT_WINDOWS`` windows through the model's head
    (:func:`satlib.gradient_bottleneck.gradient_split`; Godey & Artzi 2026)."""
    batch = windows[:GRADIENT_WINDOWS]
    hidden = model.base_model(input_ids=batch[:, :-1]).last_hidden_state
    head = model.get_output_embeddings().weight
    return gradient_split(hidden.reshape(-1, hidden.shape[-1]), head, batch[:, 1:].reshape(-1))


def _last_layer_profile(model: torch.nn.Module, windows: torch.Tensor | None) -> list[float]:
    return anisotropy_profile(model, windows[:ANISOTROPY_WINDOWS]).tolist()


#: Every measurement of a checkpoint, by name. ``evaluation`` is the held-out sample of a sweep; ``training`` a
#: sample of the training data (long runs, shapes: saturation raises both losses, overfitting only the first).
MEASUREMENTS: dict[str, Measurement] = {
    "heldout_loss": Measurement(heldout_loss, "evaluation"),
    "train_loss": Measurement(heldout_loss, "training"),
    "anisotropy_profile": Measurement(_last_layer_profile, "evaluation"),
    "head_singular_values": Measurement(lambda model, _: head_singular_values(model).tolist(), None),
    "gradient_bottleneck": Measurement(gradient_bottleneck, "evaluation"),
}


def frequency_baselines(preset: str | Preset = "tiny") -> dict[str, float]:
    """Cross-entropy (nats) of two predictors that ignore the context, on the targets of a preset's evaluation
    sample: a uniform guess over the vocabulary, and the unigram model (token frequencies of the corpus's training
    split, add-one smoothed; NaN for The Pile, whose training frequencies the book does not have)."""
    preset = get_preset(preset)
    sample = preset.evaluation
    targets = sample_windows(sample, preset)[:, 1:].numpy().ravel()
    vocab_size = len(load_tokenizer((preset.measured_models or preset.suite_names())[0], preset))
    unigram = float("nan")
    if isinstance(sample, CorpusSample) and sample.tokenizer.startswith("bpe-"):
        log_frequency = unigram_log_frequencies(token_ids("train", vocab_size), vocab_size)
        unigram = float(-log_frequency[targets].mean())
    return {"uniform": float(np.log(vocab_size)), "unigram": unigram}


def training_log_frequencies(model: str, preset: str | Preset = "tiny") -> NDArray[np.float64]:
    """Log-frequency of each token of ``model``'s vocabulary in the corpus's training split (add-one smoothed), in
    that model's tokenizer: what a head's frequency direction is compared with."""
    preset = get_preset(preset)
    vocab_size = len(load_tokenizer(model, preset))
    if preset.suite is not None and model in preset.suite_names():
        ids = token_ids("train", preset.suite.vocab_size)
    else:
        ids = model_token_ids(model, "train", preset)
    return unigram_log_frequencies(ids, max(vocab_size, int(ids.max()) + 1))


def frequency_alignment_along_training(
    checkpoints: list[tuple[str, int]], preset: str | Preset = "tiny"
) -> pd.DataFrame:
    """|Spearman| between the vocabulary's projection on the head's top singular direction and the tokens'
    log-frequency (:func:`satlib.metrics.frequency_alignment`), at every checkpoint (paper §4.2's hypothesis).

    Returns:
        One row per checkpoint: ``model``, ``step``, ``top direction``.
    """
    preset = get_preset(preset)
    frequencies: dict[str, NDArray[np.float64]] = {}
    rows = []
    for model, step in checkpoints:
        head = load(model, step, preset).get_output_embeddings().weight.detach()
        log_frequency = frequencies.setdefault(model, training_log_frequencies(model, preset))
        rows.append({"model": model, "step": step,
                     "top direction": frequency_alignment(head, log_frequency[: head.shape[0]], 1)[0]})  # fmt: skip
    return pd.DataFrame(rows)
