"""What the book trains and measures, as plain frozen records (ground layer: no computation beyond arithmetic).

A specification's hash is its cache key, so changing any field rebuilds what depends on it and nothing else:

* :class:`SuiteSpec`: a suite of GPT-NeoX models on Pythia's recipe (paper §3): widths, depth, data, schedule,
  checkpoints. The trainer is :mod:`satlib.training`.
* :class:`CorpusSample` and :class:`PileSample`: token windows a checkpoint is measured on.
* :class:`HeadTraining`, :class:`HeadExperiment`, :class:`MixtureExperiment`: new heads on frozen backbones
  (paper §5.1 and §6). The runners are in :mod:`satlib.heads`.

Presets (:mod:`satlib.presets`) put these together for each scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from satlib.errors import ConfigurationError
from satlib.storage import digest

SCHEDULES = ("cosine", "constant")


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigurationError(f"{owner}.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class SuiteSpec:
    """Everything that defines a trained suite; its hash keys the cache (paper §3, Pythia's recipe at small scale).

    Attributes:
        name: names the suite's models (``<name>-d<width>``) and its cache folder.
        widths: hidden sizes d of the models.
        n_layers: transformer layers of every model.
        head_dim: width of each attention head (heads = d / head_dim, at least one).
        vocab_size: vocabulary of the training data.
        context: tokens per training sequence.
        batch_size: sequences per step.
        steps: optimisation steps (tokens per model = steps x batch_size x context).
        peak_lr: learning rate after warm-up.
        seed: seeds the data order (shared by all sizes) and the initialisation.
        eval_tokens: validation tokens each checkpoint is measured on.
        checkpoints_evenly: number of evenly spaced checkpoints after the powers of two.
        warmup_fraction: linear warm-up over this fraction of the steps.
        final_lr_fraction: the cosine schedule decays to this fraction of the peak.
        schedule: ``cosine`` (Pythia: warm-up, then cosine decay) or ``constant`` (warm-up, then the peak rate).
        weight_decay: AdamW's decoupled weight decay on every parameter (GPT-NeoX exempts biases and norms: a
            simplification).
        parallel_residual: Pythia's parallel attention and MLP blocks (``True``), or sequential ones (``False``,
            as OLMo; Kulkarni et al. 2026 suspect the parallel blocks of Pythia-14M's degradation).
    """

    name: str
    widths: tuple[int, ...]
    n_layers: int = 2
    head_dim: int = 16
    vocab_size: int = 4096
    context: int = 128
    batch_size: int = 16
    steps: int = 1200
    peak_lr: float = 3e-3
    seed: int = 0
    eval_tokens: int = 32_768
    checkpoints_evenly: int = 10
    warmup_fraction: float = field(default=0.01)
    final_lr_fraction: float = field(default=0.1)
    schedule: str = "cosine"
    weight_decay: float = 0.01
    parallel_residual: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigurationError(f"unknown schedule {self.schedule!r}: use one of {list(SCHEDULES)}")
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigurationError(f"widths must be positive integers, got {self.widths!r}")
        _positive("SuiteSpec", n_layers=self.n_layers, head_dim=self.head_dim, vocab_size=self.vocab_size,
                  context=self.context, batch_size=self.batch_size, steps=self.steps, peak_lr=self.peak_lr)  # fmt: skip

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context

    def identity(self) -> dict:
        """The fields that make the specification's cache keys: all of them, but Pythia's parallel blocks (the
        default) are left out, so the suites and runs keyed before that field existed keep their keys."""
        fields = asdict(self)
        if fields["parallel_residual"]:
            del fields["parallel_residual"]
        return fields

    def key(self) -> str:
        """Short hash of :meth:`identity` (part of the cache key; the training data's identity is the other part,
        see :func:`satlib.training.model_dir`)."""
        return digest(self.identity(), 10)

    def model_name(self, width: int) -> str:
        """Registry name of the model of hidden size ``width`` (``tiny-d64``)."""
        return f"{self.name}-d{width}"

    def checkpoint_steps(self) -> list[int]:
        """Pythia's schedule shape: 0, then powers of two, then evenly spaced up to the last step."""
        powers = [2**k for k in range(int(math.log2(self.steps)) + 1) if 2**k < self.steps]
        return sorted({0, *powers, *self.evenly_spaced_steps()})

    def evenly_spaced_steps(self) -> list[int]:
        """The evenly spaced checkpoints (without the early powers of two), the last step included."""
        spacing = max(1, self.steps // self.checkpoints_evenly)
        return [*range(spacing, self.steps, spacing), self.steps]

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``final_lr_fraction`` of the
        peak (``cosine``), or the peak rate to the end (``constant``)."""
        warmup = max(1, round(self.warmup_fraction * self.steps))
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        if self.schedule == "constant":
            return self.peak_lr
        fraction = (step - warmup) / max(1, self.steps - warmup)
        floor = self.final_lr_fraction
        return self.peak_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * fraction)))


@dataclass(frozen=True)
class CorpusSample:
    """Token windows from a split of the offline corpus, encoded with a tokenizer.

    Attributes:
        tokenizer: ``bpe-4096``/``bpe-8192`` (the corpus BPEs) or a registry model whose tokenizer is used.
        split: ``train``, ``validation`` or ``test``.
        context: tokens per window (each window holds ``context + 1`` ids: inputs and targets).
        tokens: predictions to score (whole windows, fewer if the split runs out).
        layout: ``start`` (consecutive windows from the start of the split) or ``spread`` (spread evenly over it).
    """

    tokenizer: str
    split: str
    context: int
    tokens: int
    layout: str = "start"


@dataclass(frozen=True)
class PileSample:
    """Token windows from the first documents of The Pile's test split, tokenized for Pythia (paper Figure 1a).

    Attributes:
        tokens: predictions to score. context: tokens per window. files: a local JSON Lines file (field ``text``)
            read instead of streaming the Pile. offset: windows to skip first (disjoint parts of one sample).
    """

    tokens: int
    context: int
    files: str | None = None
    offset: int = 0


@dataclass(frozen=True)
class HeadTraining:
    """How each new head is trained on frozen features (paper Appendix B.1: Adam, a peak rate searched per rank).

    Attributes:
        epochs: passes over the cached training features.
        batch_tokens: hidden states per optimisation step.
        warmup_fraction: linear warm-up, then cosine decay to 10% of the peak rate.
        init: ``random`` (a new head, as in the paper) or ``svd`` (A B starts as the best rank-r approximation of
            the model's own head, Eckart–Young–Mirsky: a cheaper start when the budget is a few thousand tokens).
        precision: ``bfloat16`` (mixed precision: the matrix products of the training steps in bfloat16, weights,
            loss and every evaluation in float32, as Pythia trained in mixed precision; about four times faster on
            CPUs with bfloat16 instructions) or ``float32``.
    """

    epochs: int = 1
    batch_tokens: int = 1024
    warmup_fraction: float = 0.05
    init: str = "random"
    precision: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.init not in ("random", "svd"):
            raise ConfigurationError(f"unknown init {self.init!r}: use 'random' or 'svd'")
        if self.precision not in ("bfloat16", "float32"):
            raise ConfigurationError(f"unknown precision {self.precision!r}: use 'bfloat16' or 'float32'")
        _positive("HeadTraining", epochs=self.epochs, batch_tokens=self.batch_tokens)


@dataclass(frozen=True)
class HeadExperiment:
    """New rank-constrained heads on one frozen backbone (paper §5.1, Figures 6, 8 and 9).

    Heads train on ``train_tokens`` hidden states; the learning rate of each rank is the one with the lowest loss on
    a validation sample for the first seed (the other seeds train at it), and the loss reported is on a separate
    test sample of the same size.

    Attributes:
        model: a registry name (:mod:`satlib.models`); ``step`` None = its last checkpoint.
        ranks: inner ranks r (up to the backbone's width d).
        learning_rates: the starting grid of peak rates; a choice at an edge of the grid extends it (up to
            ``max_extensions`` times, by the grid's own ratio) until the choice is interior.
        train_tokens, eval_tokens: hidden states the heads train on, and in each of the validation and test samples.
        source: ``corpus`` (the corpus's splits, with the backbone's tokenizer) or ``pile`` (disjoint parts of one
            Pile sample).
        context: tokens per window when computing features.
        seeds: seeds of the heads' initialisation and data order; ``seed_ranks`` (default: all) run every seed, the
            other ranks the first one.
    """

    model: str
    ranks: tuple[int, ...]
    learning_rates: tuple[float, ...]
    train_tokens: int
    eval_tokens: int
    source: str = "corpus"
    context: int = 128
    training: HeadTraining = HeadTraining()
    step: int | None = None
    seeds: tuple[int, ...] = (0,)
    seed_ranks: tuple[int, ...] | None = None
    max_extensions: int = 2

    def __post_init__(self) -> None:
        if self.source not in ("corpus", "pile"):
            raise ConfigurationError(f"unknown head-experiment source {self.source!r}: use 'corpus' or 'pile'")
        if not self.ranks or not self.learning_rates or not self.seeds:
            raise ConfigurationError(f"{self.model}: ranks, learning_rates and seeds must not be empty")
        _positive("HeadExperiment", train_tokens=self.train_tokens, eval_tokens=self.eval_tokens, context=self.context)

    def seeds_of(self, rank: int) -> tuple[int, ...]:
        """The seeds trained at ``rank``."""
        return self.seeds if self.seed_ranks is None or rank in self.seed_ranks else self.seeds[:1]


@dataclass(frozen=True)
class MixtureExperiment:
    """Linear heads against Mixture-of-Softmaxes heads on one frozen backbone (the remedy of paper §6, tested).

    Attributes:
        backbone: the head experiment whose cached features (and own head) are reused.
        components: K of the mixtures.
        learning_rates: starting grid of peak rates for every head (extended at its edges like
            :class:`HeadExperiment`'s).
        warm_start: heads start from the backbone's own head instead of from scratch.
        training: epochs and batch size (``init`` is not used).
        train_tokens: how many of the backbone's training features the heads train on (default all; fewer take
            every k-th window, so that they still cover the whole split).
        rank_contexts: validation contexts on which the log-probability matrix's rank is measured (default
            2 (d + 1): more than the linear head's bound, so that the bound shows).
        seeds: seeds of every head (the rates are searched with the first; the others train at its choice).
    """

    backbone: HeadExperiment
    components: int
    learning_rates: tuple[float, ...]
    warm_start: bool = False
    training: HeadTraining = HeadTraining()
    train_tokens: int | None = None
    rank_contexts: int | None = None
    seeds: tuple[int, ...] = (0,)
    max_extensions: int = 2

    def __post_init__(self) -> None:
        _positive("MixtureExperiment", components=self.components)

    @property
    def tokens(self) -> int:
        """Training tokens of the heads."""
        return min(self.train_tokens or self.backbone.train_tokens, self.backbone.train_tokens)

    @property
    def label(self) -> str:
        """The comparison's name: backbone and start."""
        start = "fine-tuned from its own head" if self.warm_start else "from scratch"
        return f"{self.backbone.model}, {start}"
