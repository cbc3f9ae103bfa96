"""Rank-constrained LM heads on frozen backbones (paper §5.1 and Appendix B.1, Figures 6, 8 and 9).

The paper freezes a trained model, replaces its head by ``W = A B`` of inner rank r (A: V x r, B: r x d),
trains only A and B, and finds that performance degrades as soon as r falls below about 1,000 even for
backbones much wider than that: the head, not the backbone, is the bottleneck.

The backbone is frozen, so its final hidden states (what the head reads) are computed once and cached
(:func:`backbone_features`); every (rank, learning rate) run of a sweep then trains on the cached features
(:func:`rank_sweep`). ``benchmarks/bench_heads.py`` measures what this saves against rerunning the backbone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from satlib.config import cache_dir, progress, setting, write_atomically


@dataclass(frozen=True)
class HeadTraining:
    """How each rank-constrained head is trained (Appendix B.1: Adam, a peak rate searched per rank).

    Attributes:
        epochs: passes over the cached training features.
        batch_tokens: hidden states per optimisation step.
        warmup_fraction: linear warm-up, then cosine decay to 10% of the peak rate.
        init: ``random`` (a new head, as in the paper) or ``svd`` (A B starts as the best rank-r approximation of
            the model's own head, Eckart–Young–Mirsky: a cheaper start when the budget is a few thousand tokens).
        seed: seeds the initialisation and the order of the features.
    """

    epochs: int = 2
    batch_tokens: int = 1024
    warmup_fraction: float = 0.05
    init: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in ("random", "svd"):
            raise ValueError(f"unknown init {self.init!r}: use 'random' or 'svd'")
        if self.epochs < 1 or self.batch_tokens < 1:
            raise ValueError("epochs and batch_tokens must be at least 1")


class LowRankHead(torch.nn.Module):
    """A linear LM head constrained to rank r: ``logits = h Bᵀ Aᵀ`` with A (V, r) and B (r, d) (paper §5.1)."""

    def __init__(self, vocab_size: int, width: int, rank: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(vocab_size, width):
            raise ValueError(f"rank must be in [1, min(V, d) = {min(vocab_size, width)}], got {rank}")
        # Each factor scaled so that logits start with the variance of a standard linear head (std 0.02).
        self.A = torch.nn.Parameter(torch.randn(vocab_size, rank, generator=generator) * math.sqrt(0.02 / rank))
        self.B = torch.nn.Parameter(torch.randn(rank, width, generator=generator) * math.sqrt(0.02))

    @classmethod
    def from_head(cls, weight: torch.Tensor, rank: int) -> LowRankHead:
        """The best rank-r approximation of a (V, d) head, split as A = U Σ^½, B = Σ^½ Vᵀ (Eckart–Young–Mirsky)."""
        head = cls(weight.shape[0], weight.shape[1], rank)
        u, s, vt = torch.linalg.svd(weight.detach().double(), full_matrices=False)
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


@torch.no_grad()
def backbone_features(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16, device: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the LM head reads: final hidden states (after the final norm) and the tokens they must predict.

    Args:
        model: a ``transformers`` causal LM (its device and dtype are used; ``device`` overrides the batches').
        windows: (n, context + 1) token ids.

    Returns:
        features (n x context, d) float32 on the CPU, targets (n x context,) int64.
    """
    device = device or str(next(model.parameters()).device)
    features = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size, :-1].to(device)
        hidden = model.base_model(input_ids=batch).last_hidden_state
        features.append(hidden.reshape(-1, hidden.shape[-1]).float().cpu())
    return torch.cat(features), windows[:, 1:].reshape(-1).clone()


def spread_windows(token_ids: NDArray, context: int, n_tokens: int, offset: int = 0) -> torch.Tensor:
    """Windows of ``context + 1`` tokens spread evenly over the whole stream (not only its start), deterministic.

    ``offset`` shifts every window (use different offsets for disjoint samples of one split).
    """
    ids = np.asarray(token_ids)
    count = -(-n_tokens // context)
    stride = (len(ids) - context - 1 - offset) // max(count, 1)
    if stride < context + 1:
        raise ValueError(f"{len(ids)} tokens are too few for {count} disjoint windows of {context + 1}")
    starts = offset + stride * np.arange(count)
    return torch.from_numpy(np.stack([ids[s : s + context + 1] for s in starts]).astype(np.int64))


def _cosine_rate(peak: float, step: int, steps: int, warmup_fraction: float) -> float:
    warmup = max(1, round(warmup_fraction * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    fraction = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))


def fit_head(
    head: torch.nn.Module,
    features: torch.Tensor,
    targets: torch.Tensor,
    learning_rate: float,
    training: HeadTraining = HeadTraining(),
    device: str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.nn.Module:
    """Train any head on frozen features with Adam, warm-up and cosine decay (paper Appendix B.1).

    The head maps (N, d) features to (N, V) logits or log-probabilities: cross-entropy treats both alike,
    since the log-softmax of log-probabilities is themselves.

    Args:
        head: the module to train (moved to ``device``); features: (N, d); targets: (N,).
        learning_rate: peak rate of the schedule.
        training: epochs, batch size and seed (``generator``, when given, orders the features instead).
    """
    generator = generator or torch.Generator().manual_seed(training.seed)
    head = head.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate, betas=(0.9, 0.95))
    per_epoch = -(-features.shape[0] // training.batch_tokens)
    steps = training.epochs * per_epoch
    step = 0
    for _ in range(training.epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for start in range(0, features.shape[0], training.batch_tokens):
            picked = order[start : start + training.batch_tokens]
            for group in optimizer.param_groups:
                group["lr"] = _cosine_rate(learning_rate, step, steps, training.warmup_fraction)
            outputs = head(features[picked].to(device))
            loss = torch.nn.functional.cross_entropy(outputs, targets[picked].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return head.eval()


def train_low_rank_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    rank: int,
    learning_rate: float,
    training: HeadTraining = HeadTraining(),
    original_head: torch.Tensor | None = None,
    device: str = "cpu",
) -> LowRankHead:
    """Train a rank-``rank`` head on frozen features with Adam (paper Appendix B.1).

    Args:
        features: (N, d) hidden states; targets: (N,) next tokens.
        vocab_size: V.
        rank: inner rank r of ``A B``.
        learning_rate: peak rate of the warm-up + cosine schedule.
        training: epochs, batch size, initialisation, seed.
        original_head: (V, d), needed when ``training.init == "svd"``.
        device: where the head trains (features move there one batch at a time).
    """
    generator = torch.Generator().manual_seed(training.seed)
    if training.init == "svd":
        if original_head is None:
            raise ValueError("init='svd' starts from the model's own head: pass original_head")
        head = LowRankHead.from_head(original_head, rank)
    else:
        head = LowRankHead(vocab_size, features.shape[1], rank, generator)
    return fit_head(head, features, targets, learning_rate, training, device, generator)


@torch.no_grad()
def evaluate_head(
    head: torch.nn.Module | torch.Tensor, features: torch.Tensor, targets: torch.Tensor, batch_tokens: int = 4096
) -> tuple[float, float]:
    """Mean next-token loss (nats) and accuracy of a head (a module, or a (V, d) weight) on cached features."""
    device = head.device if isinstance(head, torch.Tensor) else next(head.parameters()).device
    apply = (lambda h: h @ head.T) if isinstance(head, torch.Tensor) else head
    total, correct = 0.0, 0
    for start in range(0, features.shape[0], batch_tokens):
        logits = apply(features[start : start + batch_tokens].to(device)).float()
        expected = targets[start : start + batch_tokens].to(device)
        total += float(torch.nn.functional.cross_entropy(logits, expected, reduction="sum"))
        correct += int((logits.argmax(-1) == expected).sum())
    return total / features.shape[0], correct / features.shape[0]


def rank_sweep(
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    vocab_size: int,
    ranks: list[int],
    learning_rates: list[float],
    training: HeadTraining = HeadTraining(),
    original_head: torch.Tensor | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Train one head per (rank, learning rate) on cached features; mark each rank's best rate (Figures 6 and 9).

    Returns:
        Columns ``rank``, ``learning_rate``, ``loss``, ``accuracy`` (validation) and ``chosen`` (the rate with
        the lowest validation loss for that rank, as the paper's search picks it).
    """
    rows = []
    configurations = [(rank, rate) for rank in ranks for rate in learning_rates]
    for rank, rate in progress(configurations, desc="rank-constrained heads", unit="head", leave=False):
        head = train_low_rank_head(*train, vocab_size, rank, rate, training, original_head, device)
        loss, accuracy = evaluate_head(head, *validation)
        rows.append({"rank": rank, "learning_rate": rate, "loss": loss, "accuracy": accuracy})
    table = pd.DataFrame(rows)
    table["chosen"] = False
    table.loc[table.groupby("rank").loss.idxmin(), "chosen"] = True
    return table


@dataclass(frozen=True)
class HeadExperiment:
    """One backbone's experiment: which model, which data, which sweep (a preset's defaults in :data:`EXPERIMENTS`).

    Attributes:
        model: a name of :func:`satlib.models.model_names`; step None = the last checkpoint.
        ranks: inner ranks r (up to the backbone's width d).
        learning_rates: the peak rates searched for each rank.
        train_tokens, eval_tokens: hidden states the heads train and are evaluated on.
        context: tokens per window when computing features.
    """

    model: str
    ranks: tuple[int, ...]
    learning_rates: tuple[float, ...]
    train_tokens: int
    eval_tokens: int
    context: int = 128
    training: HeadTraining = HeadTraining()
    step: int | None = None

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


#: Each preset's head experiments. ``tiny``: the largest suite model (trained from scratch, as the paper) and
#: SmolLM2-135M (V = 49,152, d = 576; from its own head's truncation, since a few thousand CPU tokens cannot
#: train a 49,152-row head from scratch). ``pythia``: Pythia-410M on a Pile sample (the paper used ~150M tokens;
#: cached features of that size do not fit in memory, so the default is 1M).
EXPERIMENTS: dict[str, list[HeadExperiment]] = {
    "tiny": [
        HeadExperiment(
            "tiny-d128",
            (2, 4, 8, 16, 32, 64, 128),
            (3e-3, 1e-2, 3e-2, 1e-1),
            131_072,
            16_384,
            training=HeadTraining(epochs=1),
        ),
        HeadExperiment(
            "smollm2-135m",
            (32, 128, 576),
            (1e-4, 1e-3, 1e-2),
            8_192,
            4_096,
            training=HeadTraining(epochs=1, batch_tokens=256, init="svd"),
        ),
    ],
    "pythia": [
        HeadExperiment(
            "pythia-410m",
            (32, 64, 128, 256, 512, 1024),
            (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2),
            1_000_000,
            100_000,
            context=2048,
            training=HeadTraining(epochs=1, batch_tokens=8192),
        ),
    ],
}


def experiments(preset: str) -> list[HeadExperiment]:
    """A preset's head experiments: :data:`EXPERIMENTS`, with a parameter file's ``head_*`` settings applied to the
    ``pythia`` preset's (:data:`satlib.config.SETTING_NAMES`)."""
    if preset not in EXPERIMENTS:
        raise ValueError(f"no head experiments for preset {preset!r}: use one of {sorted(EXPERIMENTS)}")
    if preset != "pythia":
        return EXPERIMENTS[preset]
    base = EXPERIMENTS[preset][0]
    return [replace(base, model=str(setting("head_model", base.model)),
                    ranks=tuple(int(r) for r in setting("head_ranks", base.ranks)),
                    learning_rates=tuple(float(r) for r in setting("head_learning_rates", base.learning_rates)),
                    train_tokens=int(setting("head_train_tokens", base.train_tokens)),
                    eval_tokens=int(setting("head_eval_tokens", base.eval_tokens)),
                    context=int(setting("pile_context", base.context)))]  # fmt: skip


def experiment_windows(
    experiment: HeadExperiment, preset: str, pile_files: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation windows of an experiment: the corpus's splits (``tiny``), or two disjoint parts
    of one Pile sample (``pythia``; ``pile_files``, a local JSON Lines file, replaces the streamed Pile)."""
    from satlib.models import SMOLLM2

    if preset == "pythia":
        from satlib.evaluate import pile_windows

        pile_files = pile_files or setting("pile_files", None)
        windows = pile_windows(experiment.train_tokens + experiment.eval_tokens, experiment.context, pile_files)
        split = -(-experiment.train_tokens // experiment.context)
        return windows[:split], windows[split:]
    from satlib.suite import suite_spec
    from satlib.tokenization import model_token_ids, token_ids

    def ids(split: str) -> NDArray:
        if experiment.model == SMOLLM2:
            return model_token_ids(SMOLLM2, split, preset)
        return token_ids(split, suite_spec(preset).vocab_size)

    return (spread_windows(ids("train"), experiment.context, experiment.train_tokens),
            spread_windows(ids("validation"), experiment.context, experiment.eval_tokens))  # fmt: skip


def cached_features(
    experiment: HeadExperiment, preset: str, device: str = "cpu", dtype: str = "float32", pile_files: str | None = None
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Train and validation features of an experiment's backbone, and its own head: computed once, cached.

    Stored as safetensors under ``<cache>/heads/<preset>/<model>-<key>/features.safetensors`` (atomically).
    """
    from filelock import FileLock
    from safetensors.torch import load_file, save_file

    from satlib.models import load

    path = _experiment_dir(experiment, preset, dtype, pile_files) / "features.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):  # chapters run side by side ask for the same features: compute once
        if not path.is_file():
            model = load(experiment.model, experiment.step, preset, device=device, dtype=dtype)
            train_windows, validation_windows = experiment_windows(experiment, preset, pile_files)
            train = backbone_features(model, train_windows)
            validation = backbone_features(model, validation_windows)
            head = model.get_output_embeddings().weight.detach().float().cpu()
            tensors = {"train_features": train[0], "train_targets": train[1], "validation_features": validation[0],
                       "validation_targets": validation[1], "head": head}  # fmt: skip
            temporary = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(temporary))
            temporary.replace(path)
    tensors = load_file(str(path))
    return ((tensors["train_features"], tensors["train_targets"]),
            (tensors["validation_features"], tensors["validation_targets"]), tensors["head"])  # fmt: skip


def _experiment_dir(
    experiment: HeadExperiment, preset: str, dtype: str = "float32", pile_files: str | None = None
) -> Path:
    """Cache folder of an experiment: its settings, the backbone checkpoint's location (a retrained suite lives
    elsewhere), the dtype and, for ``pythia``, the Pile's source (streamed, or which local file) enter the key."""
    from satlib.models import model_path

    checkpoint = str(model_path(experiment.model, experiment.step, preset))
    source = f"|pile={pile_files or setting('pile_files', None) or 'stream'}" if preset == "pythia" else ""
    key = hashlib.sha256(f"{experiment.key()}|{checkpoint}|{dtype}{source}".encode()).hexdigest()[:10]
    return cache_dir() / "heads" / preset / f"{experiment.model}-{key}"


def run_experiment(
    experiment: HeadExperiment, preset: str, device: str = "cpu", dtype: str = "float32", pile_files: str | None = None
) -> pd.DataFrame:
    """An experiment's sweep (cached as JSON beside its features), with the backbone's own head as reference.

    Returns:
        :func:`rank_sweep`'s table plus ``model``, ``width``, ``w_error`` (of the backbone's own head at rank r,
        Figure 8), ``truncated_loss`` (the backbone's own head truncated to rank r, untrained), and a last row
        with ``rank`` = d, ``learning_rate`` NaN and ``original`` True: the model's own head on the same features.
    """
    from satlib.metrics import singular_values, w_error

    results = _experiment_dir(experiment, preset, dtype, pile_files) / "sweep.json"
    train, validation, head = cached_features(experiment, preset, device, dtype, pile_files)
    if results.is_file():
        table = pd.read_json(results, orient="records")
    else:
        table = rank_sweep(train, validation, head.shape[0], list(experiment.ranks), list(experiment.learning_rates),
                           experiment.training, head, device)  # fmt: skip
        table["truncated_loss"] = [evaluate_head(LowRankHead.from_head(head, r), *validation)[0] for r in table["rank"]]
        loss, accuracy = evaluate_head(head, *validation)
        own = {"rank": head.shape[1], "learning_rate": float("nan"), "loss": loss, "accuracy": accuracy,
               "truncated_loss": loss}  # fmt: skip
        table = pd.concat([table.assign(original=False), pd.DataFrame([own | {"chosen": True, "original": True}])])
        write_atomically(results, table.to_json(orient="records"))
    sigma = singular_values(head)
    table["w_error"] = [w_error(sigma, min(int(r), sigma.size)) for r in table["rank"]]
    return table.assign(model=experiment.model, width=head.shape[1]).reset_index(drop=True)


def rank_constrained_heads(
    preset: str = "tiny", device: str = "cpu", dtype: str = "float32", pile_files: str | None = None
) -> pd.DataFrame:
    """Every head experiment of a preset (:func:`experiments`), one table (Figures 6, 8 and 9)."""
    tables = [run_experiment(e, preset, device, dtype, pile_files) for e in experiments(preset)]
    return pd.concat(tables, ignore_index=True)


def chosen_at_grid_edge(table: pd.DataFrame, by: str) -> pd.Series:
    """Whether each chosen learning rate is the smallest or the largest searched in its group (column ``by``): a
    choice at the edge of a grid leaves open whether a rate beyond it would do better. Rows without a rate (a
    model's own head) are left out.

    Args:
        table: rows of :func:`rank_sweep` or :func:`run_mixture_experiment` (``learning_rate``, ``chosen``, ``by``).
    """
    searched = table[table.learning_rate.notna()]
    chosen = searched[searched.chosen]
    rates = searched.groupby(by).learning_rate
    return chosen.learning_rate.eq(chosen[by].map(rates.min())) | chosen.learning_rate.eq(chosen[by].map(rates.max()))


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
            raise ValueError(f"components must be at least 1, got {components}")
        if output_width != width and (residual or not projection):
            raise ValueError(f"output_width {output_width} != width {width} needs projection=True, residual=False")
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
        log_components = torch.log_softmax(contexts @ self.weight.T, dim=-1)  # (N, K, V)
        if self.prior is None:
            return log_components[:, 0]
        log_prior = torch.log_softmax(hidden @ self.prior.T, dim=-1)  # (N, K)
        return torch.logsumexp(log_prior.unsqueeze(-1) + log_components, dim=1)

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
        raise ValueError(f"no mixture of {components} components fits in a {vocab_size} x {width} head's parameters")
    return output_width


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@torch.no_grad()
def log_probability_spectrum(head: MixtureOfSoftmaxes, features: torch.Tensor) -> NDArray[np.float64]:
    """Singular values of the (N, V) matrix of a head's log-probabilities on N contexts, computed in float64.

    A linear head's ``log softmax(W h) = W h - logsumexp(W h) 1`` has rank at most d + 1 (the softmax bottleneck,
    paper §2 and Yang et al. 2018); a mixture's need not.
    """
    from satlib.metrics import singular_values

    log_probs = copy.deepcopy(head).double().cpu()(features.double())
    return singular_values(log_probs.numpy())


@dataclass(frozen=True)
class MixtureExperiment:
    """Linear head against Mixture-of-Softmaxes heads on one frozen backbone (the paper's §6 remedy, tested).

    Attributes:
        backbone: the rank-constrained experiment whose cached features (and own head) are reused.
        components: K of the mixtures.
        learning_rates: peak rates searched for every head.
        warm_start: heads start from the backbone's own head (:meth:`MixtureOfSoftmaxes.from_head`) instead of
            from scratch; there is then no narrower matched-parameter mixture (the residual needs d' = d).
        training: epochs and batch size (``init`` is not used).
        train_tokens: how many of the backbone's cached training features the heads train on (default all; fewer
            take every k-th window, so that they still cover the whole split).
        rank_contexts: validation contexts on which the log-probability matrix's rank is measured (default
            2 (d + 1): more than the linear head's bound, so that the bound shows).
    """

    backbone: HeadExperiment
    components: int
    learning_rates: tuple[float, ...]
    warm_start: bool = False
    training: HeadTraining = HeadTraining(epochs=1)
    train_tokens: int | None = None
    rank_contexts: int | None = None

    @property
    def tokens(self) -> int:
        """Training tokens of the heads."""
        return min(self.train_tokens or self.backbone.train_tokens, self.backbone.train_tokens)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def head_factories(self, vocab_size: int, width: int, own_head: torch.Tensor) -> dict[str, Callable]:
        """The heads compared, by label: each a function of a seeded generator that builds a fresh head."""
        k = self.components
        if self.warm_start:
            return {
                "linear": lambda generator: MixtureOfSoftmaxes.from_head(own_head, 1),
                f"MoS K={k}": lambda generator: MixtureOfSoftmaxes.from_head(own_head, k, generator),
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


#: Each preset's head comparisons. ``tiny``: the largest suite model with new heads from scratch (on every other
#: window of chapter 04's cached features) and SmolLM2-135M fine-tuned from its own head (a CPU cannot train a
#: 49,152-row head from scratch on a few thousand tokens). Three rates for the suite model, two for SmolLM2 (each
#: of its heads costs as much as four of the suite model's), to fit the book's time budget; the chapter counts the
#: choices that sit at an edge of a grid.
MIXTURE_EXPERIMENTS: dict[str, list[MixtureExperiment]] = {
    "tiny": [
        MixtureExperiment(EXPERIMENTS["tiny"][0], 4, (3e-3, 1e-2, 3e-2), train_tokens=65_536),
        MixtureExperiment(
            EXPERIMENTS["tiny"][1], 2, (1e-4, 3e-4), warm_start=True, training=HeadTraining(epochs=1, batch_tokens=256)
        ),
    ],
    "pythia": [  # the same two comparisons on one backbone: from scratch, and fine-tuned from its own head
        MixtureExperiment(
            EXPERIMENTS["pythia"][0], 4, (1e-3, 3e-3, 1e-2), training=HeadTraining(epochs=1, batch_tokens=8192)
        ),
        MixtureExperiment(
            EXPERIMENTS["pythia"][0],
            2,
            (1e-4, 3e-4),
            warm_start=True,
            training=HeadTraining(epochs=1, batch_tokens=8192),
        ),
    ],
}


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


def mixture_experiments(preset: str) -> list[MixtureExperiment]:
    """A preset's head comparisons: :data:`MIXTURE_EXPERIMENTS`, on the backbone of :func:`experiments` for
    ``pythia`` (so that a parameter file's ``head_*`` settings apply to both chapters)."""
    if preset not in MIXTURE_EXPERIMENTS:
        raise ValueError(f"no head comparisons for preset {preset!r}: use one of {sorted(MIXTURE_EXPERIMENTS)}")
    if preset != "pythia":
        return MIXTURE_EXPERIMENTS[preset]
    return [replace(e, backbone=experiments(preset)[0]) for e in MIXTURE_EXPERIMENTS[preset]]


def _seconds_per_token(head: torch.nn.Module, features: torch.Tensor, repeats: int = 3) -> float:
    """Best of ``repeats`` timed forward passes over ``features``, per token."""
    import time

    best = math.inf
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, features.shape[0], 1024):
                head(features[start : start + 1024])
            best = min(best, time.perf_counter() - started)
    return best / features.shape[0]


def run_mixture_experiment(
    experiment: MixtureExperiment,
    preset: str,
    device: str = "cpu",
    dtype: str = "float32",
    pile_files: str | None = None,
) -> pd.DataFrame:
    """Train every head of a comparison at every rate; measure the chosen ones (cached as JSON beside the features).

    Returns:
        One row per (head, learning rate): ``model``, ``head``, ``learning_rate``, ``loss`` and ``accuracy``
        (validation), ``parameters``, ``multiply_adds`` per token, ``chosen`` (the head's best rate); and for
        chosen rows ``rank`` (numerical rank of the log-probability matrix on ``rank_contexts`` contexts),
        ``dimension_99`` (singular directions that leave under 1% of its Frobenius norm) and
        ``seconds_per_token`` (CPU forward pass over 4,096 tokens, measured once when the results were computed);
        ``model`` and ``comparison`` (the backbone and how the heads started: one backbone may have two).
        A last row
        ``own head`` is the backbone's untrained head.
    """
    from satlib.metrics import rank_of_spectrum, w_error_curve
    from satlib.ngram import dimension_at

    results = _experiment_dir(experiment.backbone, preset, dtype, pile_files) / f"mixture-{experiment.key()}.json"
    if results.is_file():
        return pd.read_json(results, orient="records")
    train, validation, own_head = cached_features(experiment.backbone, preset, device, dtype, pile_files)
    train = thin_windows(*train, experiment.backbone.context, experiment.tokens)
    vocab_size, width = own_head.shape
    factories = experiment.head_factories(vocab_size, width, own_head)
    rows, best = [], {}  # best: label -> (validation loss, trained head); only one module per head is kept
    configurations = [(label, rate) for label in factories for rate in experiment.learning_rates]
    for label, rate in progress(configurations, desc=f"heads on {experiment.backbone.model}", unit="head", leave=False):
        head = factories[label](torch.Generator().manual_seed(experiment.training.seed))
        fit_head(head, *train, rate, experiment.training, device)  # the same data order for every head
        loss, accuracy = evaluate_head(head, *validation)
        rows.append({"head": label, "learning_rate": rate, "loss": loss, "accuracy": accuracy,
                     "parameters": parameter_count(head), "multiply_adds": head.multiply_adds()})  # fmt: skip
        if label not in best or loss < best[label][0]:
            best[label] = (loss, head.cpu())
    own = MixtureOfSoftmaxes.from_head(own_head, 1)  # the linear head itself, timed and measured alike
    loss, accuracy = evaluate_head(own, *validation)
    rows.append({"head": "own head", "learning_rate": float("nan"), "loss": loss, "accuracy": accuracy,
                 "parameters": parameter_count(own), "multiply_adds": own.multiply_adds()})  # fmt: skip
    best["own head"] = (loss, own)
    table = pd.DataFrame(rows)
    table["chosen"] = False
    table.loc[table.groupby("head").loss.idxmin(), "chosen"] = True
    count = min(experiment.rank_contexts or 2 * (width + 1), validation[0].shape[0])
    contexts = validation[0][:: validation[0].shape[0] // count][:count]
    measured = {}
    for index in table.index[table.chosen]:
        head = best[table.at[index, "head"]][1]
        sigma = log_probability_spectrum(head, contexts)
        measured[index] = {"rank": rank_of_spectrum(sigma, contexts.shape[0], vocab_size), "rank_contexts": count,
                           "dimension_99": dimension_at(w_error_curve(sigma), 0.01),
                           "seconds_per_token": _seconds_per_token(head, validation[0][:4096])}  # fmt: skip
    table = table.join(pd.DataFrame.from_dict(measured, orient="index"))
    start = "fine-tuned from its own head" if experiment.warm_start else "from scratch"
    table = table.assign(model=experiment.backbone.model, comparison=f"{experiment.backbone.model}, {start}",
                         width=width, vocab_size=vocab_size)  # fmt: skip
    write_atomically(results, table.to_json(orient="records"))
    return table


def expressive_heads(
    preset: str = "tiny", device: str = "cpu", dtype: str = "float32", pile_files: str | None = None
) -> pd.DataFrame:
    """Every head comparison of a preset (:func:`mixture_experiments`), one table."""
    tables = [run_mixture_experiment(e, preset, device, dtype, pile_files) for e in mixture_experiments(preset)]
    return pd.concat(tables, ignore_index=True)
