"""Presets, data and cache directories, and the offline policy.

One parameter switches the scale of the whole book: the preset. ``tiny`` runs on a laptop CPU, fully
offline, in minutes (what CI and the published book use); ``pythia`` loads the real Pythia suite from the
Hugging Face hub and needs a network and, in practice, a GPU.

Directories are settings, never hard-coded paths:

* ``SATLIB_DATA_DIR``: external data (Pythia's evaluations, ...). Default: ``../shared/data`` beside the
  repository when present, else ``<cache>/data`` (filled by downloads when online).
* ``SATLIB_CACHE_DIR``: everything the book computes once and reuses. Default: ``<repo>/.cache`` for a
  checkout, ``~/.cache/satlib`` for an installed package.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The public repository of this book: Colab buttons and the Colab install cell point here.
REPOSITORY_URL = "https://github.com/satbook/saturation-companion"

DATA_DIR_ENV = "SATLIB_DATA_DIR"
CACHE_DIR_ENV = "SATLIB_CACHE_DIR"

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent

#: Environment variables that make Hugging Face libraries refuse to touch the network.
HF_OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class Preset:
    """A scale at which the whole book runs.

    Attributes:
        name: ``"tiny"`` or ``"pythia"``.
        offline: whether the preset must run without any network access.
        description: one line for the book.
    """

    name: str
    offline: bool
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", offline=True, description="CPU, offline, minutes: models trained here"),
    "pythia": Preset(
        "pythia", offline=False, description="the real Pythia suite from the Hugging Face hub (GPU advised)"
    ),
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``, or raise a one-line error listing the valid names."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)} (default 'tiny')")
    return PRESETS[name]


def repository_root() -> Path | None:
    """The checkout this package lives in, or ``None`` for an installed package (e.g. on Colab)."""
    return _REPO_ROOT if (_REPO_ROOT / "pyproject.toml").is_file() else None


def data_dir() -> Path:
    """Directory of external data, from ``SATLIB_DATA_DIR`` or the documented default."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser().resolve()
    root = repository_root()
    if root is not None and (root.parent / "shared" / "data").is_dir():
        return (root.parent / "shared" / "data").resolve()
    return cache_dir() / "data"


def cache_dir() -> Path:
    """Directory of everything computed once and reused, from ``SATLIB_CACHE_DIR`` or the default."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser().resolve()
    root = repository_root()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "satlib"


class NetworkBlockedError(ConnectionError):
    """Raised when code running under an offline preset tries to reach a non-local address."""


_offline_guard = {"installed": False, "active": False}


def _is_local(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # Unix sockets and the like never leave the machine.
    host = str(address[0])
    if host in {"localhost", ""}:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not local


def _audit(event: str, args: tuple) -> None:
    if not _offline_guard["active"]:
        return
    if event in {"socket.connect", "socket.sendto"} and not _is_local(args[1]):
        raise NetworkBlockedError(
            f"network access to {args[1]!r} blocked: the 'tiny' preset is offline; "
            "use PRESET='pythia' on a machine with network access"
        )
    if event == "socket.getaddrinfo" and not _is_local((args[0],)):
        raise NetworkBlockedError(
            f"DNS lookup of {args[0]!r} blocked: the 'tiny' preset is offline; "
            "use PRESET='pythia' on a machine with network access"
        )


def block_network(active: bool = True) -> None:
    """Forbid (or allow again) connections to non-loopback addresses in this process.

    Implemented with an audit hook (PEP 578), so it catches every socket, whichever library opens it.
    Loopback stays open: Jupyter kernels talk to their clients over it.
    """
    if not _offline_guard["installed"]:
        sys.addaudithook(_audit)
        _offline_guard["installed"] = True
    _offline_guard["active"] = active


def network_blocked() -> bool:
    """Whether :func:`block_network` is in force."""
    return bool(_offline_guard["active"])


def network_available(host: str = "huggingface.co", port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on ``port`` (False when the offline guard is on)."""
    if network_blocked():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when installed) PyTorch."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but keep metrics usable without it
        return
    torch.manual_seed(seed)


#: What a parameter file may set for the ``pythia`` preset (``SETTINGS:`` in ``params/*.yaml``, passed to every
#: chapter), and what each replaces. Unset names keep satlib's defaults, which follow the paper where it fits.
SETTING_NAMES: dict[str, str] = {
    "models": "Pythia models that chapters 01-03 measure (default satlib.evaluate.FIGURE_1A_MODELS)",
    "steps": "their checkpoints (default satlib.evaluate.FIGURE_1A_STEPS)",
    "pile_files": "a local JSON Lines file (field 'text') read instead of streaming the Pile",
    "pile_tokens": "Pile tokens every checkpoint is measured on (default 50,000, as Figure 1a)",
    "pile_context": "tokens per Pile window, also the context of the head experiments (default 2,048)",
    "head_model": "backbone of the head experiments of chapters 04 and 07 (default pythia-410m)",
    "head_ranks": "ranks of the rank-constrained heads (chapter 04)",
    "head_learning_rates": "peak learning rates searched for each rank (chapter 04)",
    "head_train_tokens": "tokens the new heads train on (default 1M; the paper used about 150M)",
    "head_eval_tokens": "tokens the new heads are evaluated on",
}
#: The type of each setting: a scalar type, or a list of that type.
SETTING_TYPES: dict[str, type | list[type]] = {
    "models": [str], "steps": [int], "pile_files": str, "pile_tokens": int, "pile_context": int, "head_model": str,
    "head_ranks": [int], "head_learning_rates": [float], "head_train_tokens": int, "head_eval_tokens": int,
}  # fmt: skip
_settings: dict[str, object] = {}


def _fits(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def apply_settings(settings: dict | None, preset: str = "pythia") -> None:
    """Replace the current settings (names of :data:`SETTING_NAMES`); ``None`` or ``{}`` restores the defaults."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise ValueError(
            f"unknown settings {unknown}: use names from satlib.config.SETTING_NAMES {sorted(SETTING_NAMES)}"
        )
    for name, value in settings.items():
        kind = SETTING_TYPES[name]
        if isinstance(kind, list):
            if not isinstance(value, list) or not value or not all(_fits(v, kind[0]) for v in value):
                raise ValueError(f"setting {name} must be a non-empty list of {kind[0].__name__}, got {value!r}")
        elif not _fits(value, kind):
            raise ValueError(f"setting {name} must be of type {kind.__name__}, got {value!r}")
    if settings and get_preset(preset).offline:
        raise ValueError(
            f"settings apply to the pythia preset only, not {preset!r}: drop SETTINGS or use PRESET: pythia"
        )
    _settings.clear()
    _settings.update(settings)


def setting(name: str, default: object) -> object:
    """The value a parameter file set for ``name``, or ``default`` (satlib's own) when it set none."""
    if name not in SETTING_NAMES:
        raise KeyError(f"{name!r} is not a setting: see satlib.config.SETTING_NAMES")
    return _settings.get(name, default)


def setup(preset: str = "tiny", seed: int = 0, settings: dict | None = None) -> Preset:
    """Prepare a notebook or script to run at ``preset``: validate it, seed, apply the offline policy and the
    parameter file's ``settings`` (:data:`SETTING_NAMES`; ``pythia`` only).

    Call it once, right after the parameters cell. Under an offline preset the Hugging Face libraries are
    told to stay offline and any connection to a non-loopback address raises :class:`NetworkBlockedError`.
    """
    chosen = get_preset(preset)
    apply_settings(settings, preset)
    # Libraries import tqdm.auto, which warns in notebooks without ipywidgets; the book shows no progress bars.
    warnings.filterwarnings("ignore", message="IProgress not found")
    if chosen.offline:
        os.environ.update(HF_OFFLINE_VARIABLES)
        block_network(True)
    elif _offline_guard["installed"]:
        block_network(False)
    seed_everything(seed)
    return chosen


def write_atomically(path: Path, payload: str | bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file renamed into place: readers never see half a file."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as stream:
        stream.write(payload.encode("utf-8") if isinstance(payload, str) else payload)
    os.replace(temporary, path)


def write_directory_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a temporary folder beside ``directory``, then rename it into place."""
    import shutil
    import tempfile

    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    write(temporary)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(temporary, directory)


def progress(iterable: object = None, **kwargs: object):  # noqa: ANN201 - a tqdm bar
    """A tqdm progress bar shown on terminals only: quiet in notebooks and CI logs, whose outputs it would clutter.

    Also silences transformers' own bars (for example "Writing model shards"), which would land in notebook
    outputs the same way.
    """
    from tqdm import tqdm
    from transformers.utils import logging

    logging.disable_progress_bar()
    return tqdm(iterable, disable=None, **kwargs)
