"""What a frozen backbone's head reads, computed once and shared by every head trained on it (measurement layer).

The backbone is frozen, so its final hidden states (after the final norm) are computed once per (checkpoint, token
windows, precision) and cached as safetensors, keyed by exactly those: chapters 04 and 07 share them, and changing a
rank grid or a learning rate never recomputes them. ``benchmarks/bench_heads.py`` measures what this saves against
rerunning the backbone for every head.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from satlib.config import cache_dir
from satlib.evaluate import sample_windows
from satlib.heads.lowrank import Split
from satlib.models import Checkpoint, checkpoint, load_checkpoint
from satlib.presets import Preset, get_preset
from satlib.specs import CorpusSample, HeadExperiment, PileSample
from satlib.storage import build_once, digest, write_atomically

SPLITS = ("train", "validation", "test")


@torch.no_grad()
def backbone_features(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 16) -> Split:
    """What the LM head reads: final hidden states (after the final norm) and the tokens they must predict.

    Args:
        model: a ``transformers`` causal LM. windows: (n, context + 1) token ids.

    Returns:
        features (n x context, d) float32 on the CPU, targets (n x context,) int64.
    """
    device = next(model.parameters()).device
    features = []
    for start in range(0, windows.shape[0], batch_size):
        hidden = model.base_model(input_ids=windows[start : start + batch_size, :-1].to(device)).last_hidden_state
        features.append(hidden.reshape(-1, hidden.shape[-1]).float().cpu())
    return torch.cat(features), windows[:, 1:].reshape(-1).clone()


def experiment_samples(experiment: HeadExperiment, preset: Preset) -> dict[str, CorpusSample | PileSample]:
    """The three disjoint token samples of a head experiment: ``train`` (the heads learn), ``validation`` (their
    learning rate is chosen) and ``test`` (their loss is reported).

    ``corpus``: windows spread over each split of the offline corpus, with the backbone's tokenizer (the corpus BPE
    for a suite model). ``pile``: three consecutive parts of one Pile sample.
    """
    context = experiment.context
    if experiment.source == "pile":
        files = preset.evaluation.files if isinstance(preset.evaluation, PileSample) else None
        train_windows = -(-experiment.train_tokens // context)
        eval_windows = -(-experiment.eval_tokens // context)
        return {
            "train": PileSample(experiment.train_tokens, context, files),
            "validation": PileSample(experiment.eval_tokens, context, files, offset=train_windows),
            "test": PileSample(experiment.eval_tokens, context, files, offset=train_windows + eval_windows),
        }
    suite = preset.suite
    tokenizer = f"bpe-{suite.vocab_size}" if suite is not None and experiment.model in preset.suite_names() else None
    tokenizer = tokenizer or experiment.model
    sizes = {"train": experiment.train_tokens, "validation": experiment.eval_tokens, "test": experiment.eval_tokens}
    return {split: CorpusSample(tokenizer, split, context, tokens, "spread") for split, tokens in sizes.items()}


def _features_path(point: Checkpoint, windows: torch.Tensor, dtype: str) -> Path:
    windows_key = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    return cache_dir() / "features" / point.model / f"{point.identity()}-{windows_key}-{dtype}.safetensors"


def cached_features(point: Checkpoint, windows: torch.Tensor, device: str = "cpu", dtype: str = "float32") -> Split:
    """The backbone's features on ``windows``, computed once and cached under the checkpoint's content, the
    windows' hash and the precision (written atomically; read without a lock)."""

    def compute() -> dict[str, torch.Tensor]:
        features, targets = backbone_features(load_checkpoint(point, device, dtype), windows)
        return {"features": features, "targets": targets}

    tensors = _cached(_features_path(point, windows, dtype), compute)
    return tensors["features"], tensors["targets"]


def own_head(point: Checkpoint, device: str = "cpu", dtype: str = "float32") -> torch.Tensor:
    """The backbone's own (V, d) head as float32, cached like the features."""
    path = cache_dir() / "features" / point.model / f"{point.identity()}-head-{dtype}.safetensors"

    def compute() -> dict[str, torch.Tensor]:
        return {"head": load_checkpoint(point, device, dtype).get_output_embeddings().weight.detach().float().cpu()}

    return _cached(path, compute)["head"]


@dataclass(frozen=True)
class HeadData:
    """A head experiment's cached inputs: (features, targets) of each sample, and the backbone's own head."""

    train: Split
    validation: Split
    test: Split
    head: torch.Tensor
    key: str  # names the cached features (checkpoint content, windows, precision): what results are keyed by


def experiment_data(
    experiment: HeadExperiment, preset: str | Preset = "tiny", device: str = "cpu", dtype: str = "float32"
) -> HeadData:
    """Features of the three samples of a head experiment and the backbone's own head, each cached once."""
    preset = get_preset(preset)
    point = checkpoint(experiment.model, experiment.step, preset)
    samples = experiment_samples(experiment, preset)
    windows = {name: sample_windows(samples[name], preset) for name in SPLITS}
    splits = {name: cached_features(point, windows[name], device, dtype) for name in SPLITS}
    key = digest([_features_path(point, windows[name], dtype).name for name in SPLITS])
    return HeadData(splits["train"], splits["validation"], splits["test"], own_head(point, device, dtype), key)


def _serialise(tensors: dict[str, torch.Tensor]) -> bytes:
    return save({name: tensor.contiguous() for name, tensor in tensors.items()})


def _cached(path: Path, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Tensors cached in ``path``: computed once (under a lock), read without one; a damaged file is computed again."""
    build = lambda: write_atomically(path, _serialise(compute()))  # noqa: E731
    build_once(path.is_file, build, path.with_suffix(".lock"))
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several types for a damaged file
        print(f"features: {path} is damaged ({type(error).__name__}): computing it again", file=sys.stderr)
        path.unlink(missing_ok=True)
        build_once(path.is_file, build, path.with_suffix(".lock"))
        return load_file(str(path))
