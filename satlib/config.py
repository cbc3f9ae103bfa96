"""Where things live, and the settings a parameter file may change (ground layer).

Directories are settings, never hard-coded paths:

* ``SATLIB_DATA_DIR``: external data (Pythia's evaluations, ...). Default: ``../shared/data`` beside the
  repository when present, else ``<cache>/data`` (filled by downloads when online).
* ``SATLIB_CACHE_DIR``: everything the book computes once and reuses. Default: ``<repo>/.cache`` for a
  checkout, ``~/.cache/satlib`` for an installed package.

The scale of the book is a preset (:mod:`satlib.presets`); a parameter file's ``SETTINGS`` change some of the
``pythia`` preset's choices (:data:`SETTING_NAMES`), checked here by :func:`check_settings`.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from satlib.errors import ConfigurationError

#: The version of satlib (its Colab install cell pins the tag ``v<VERSION>``).
VERSION = "0.1.0"
#: The public repository of this book: Colab buttons, the repository button and the Colab install cell derive from it.
REPOSITORY_URL = "https://github.com/satbook/saturation-companion"

DATA_DIR_ENV = "SATLIB_DATA_DIR"
CACHE_DIR_ENV = "SATLIB_CACHE_DIR"
#: A folder laid out like the hub (``<mirror>/EleutherAI/<name>/step<N>/``) that replaces it (tests, clusters).
HUB_MIRROR_ENV = "SATLIB_HUB_MIRROR"
#: The commit a copy of the source without its history was made from (provenance records, :func:`source_commit`).
SOURCE_COMMIT_ENV = "SATLIB_SOURCE_COMMIT"

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def source_commit() -> str:
    """The commit of the checkout satlib runs from, for provenance records: ``SATLIB_SOURCE_COMMIT`` when set (a
    copy of the source without its history, such as one sent to a GPU machine), else ``git rev-parse HEAD``, else
    ``unknown``."""
    if os.environ.get(SOURCE_COMMIT_ENV):
        return os.environ[SOURCE_COMMIT_ENV]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=_PACKAGE_DIR, timeout=30
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def repository_root() -> Path | None:
    """The checkout this package lives in, or ``None`` for an installed package (e.g. on Colab)."""
    return _REPO_ROOT if (_REPO_ROOT / "pyproject.toml").is_file() else None


def cache_dir() -> Path:
    """Directory of everything computed once and reused, from ``SATLIB_CACHE_DIR`` or the default."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser().resolve()
    root = repository_root()
    return root / ".cache" if root is not None else Path.home() / ".cache" / "satlib"


def data_dir() -> Path:
    """Directory of external data, from ``SATLIB_DATA_DIR`` or the documented default."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser().resolve()
    root = repository_root()
    if root is not None and (root.parent / "shared" / "data").is_dir():
        return (root.parent / "shared" / "data").resolve()
    return cache_dir() / "data"


def hub_mirror() -> Path | None:
    """The local copy of the hub named by ``SATLIB_HUB_MIRROR``, if any."""
    value = os.environ.get(HUB_MIRROR_ENV)
    return Path(value).expanduser() if value else None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}: for example SEED = 0")
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))


#: What a parameter file may set for the ``pythia`` preset (``SETTINGS:`` in ``params/*.yaml``, passed to every
#: chapter), and what each replaces. Unset names keep the preset's defaults, which follow the paper where it fits.
SETTING_NAMES: dict[str, str] = {
    "models": "Pythia models that chapters 01-03 measure (default: Figure 1a's, 14M to 410M)",
    "steps": "their checkpoints (default: Figure 1a's 17 steps)",
    "pile_files": "a local JSON Lines file (field 'text') read instead of streaming the Pile",
    "pile_tokens": "Pile tokens every checkpoint is measured on (default 50,000, as Figure 1a)",
    "pile_context": "tokens per Pile window, also the context of the head experiments (default 2,048)",
    "head_model": "backbone of the head experiments of chapters 04 and 07 (default pythia-410m)",
    "head_ranks": "ranks of the rank-constrained heads (chapter 04)",
    "head_learning_rates": "peak learning rates searched for each rank (chapter 04)",
    "head_train_tokens": "tokens the new heads train on (default 1M; the paper used about 150M)",
    "head_eval_tokens": "tokens the new heads are evaluated on (validation and test, each)",
}
#: The type of each setting: a scalar type, or a list of that type.
SETTING_TYPES: dict[str, type | list[type]] = {
    "models": [str], "steps": [int], "pile_files": str, "pile_tokens": int, "pile_context": int, "head_model": str,
    "head_ranks": [int], "head_learning_rates": [float], "head_train_tokens": int, "head_eval_tokens": int,
}  # fmt: skip


def _fits(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def check_settings(settings: object) -> dict:
    """``settings`` as a dict, checked against :data:`SETTING_NAMES` and :data:`SETTING_TYPES`.

    Raises :class:`ConfigurationError` (one line) for anything but a mapping of known names to values of their
    type (non-empty lists where a list is expected).
    """
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ConfigurationError(f"SETTINGS must be a mapping of setting names to values, got {settings!r}")
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise ConfigurationError(
            f"unknown settings {unknown}: use names from satlib.config.SETTING_NAMES {sorted(SETTING_NAMES)}"
        )
    for name, value in settings.items():
        kind = SETTING_TYPES[name]
        if isinstance(kind, list):
            if not isinstance(value, list) or not value or not all(_fits(v, kind[0]) for v in value):
                raise ConfigurationError(
                    f"setting {name} must be a non-empty list of {kind[0].__name__}, got {value!r}"
                )
        elif not _fits(value, kind):
            raise ConfigurationError(f"setting {name} must be of type {kind.__name__}, got {value!r}")
    return dict(settings)
