"""Benchmark: a rank-constrained head sweep on cached backbone features against a naive sweep that runs the
frozen backbone again for every (rank, learning rate), same data, same process.

Run: ``.venv/bin/python benchmarks/bench_heads.py``. Uses the largest ``tiny`` suite model (trained by
``make suite``). Prints both times, their ratio, and both sweeps' losses (which must agree: the naive sweep
computes the same features, so the script exits non-zero if any loss differs by more than 1e-4).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from satlib import evaluate, heads, models, presets
from satlib.heads import features
from satlib.specs import HeadExperiment, HeadTraining

RANKS, RATES, TRAIN_TOKENS, EVAL_TOKENS = (4, 32, 128), (3e-3, 3e-2), 32_768, 8_192


def main() -> int:
    experiment = HeadExperiment("tiny-d128", RANKS, RATES, TRAIN_TOKENS, EVAL_TOKENS, training=HeadTraining(epochs=1))
    preset = presets.get_preset("tiny")
    samples = features.experiment_samples(experiment, preset)
    windows = {name: evaluate.sample_windows(sample, preset) for name, sample in samples.items()}
    model = models.load("tiny-d128", preset=preset)
    vocab_size, width = model.get_output_embeddings().weight.shape

    def sweep(compute: callable) -> list[float]:
        losses = []
        for rank in RANKS:
            for rate in RATES:
                train, validation = compute("train"), compute("validation")
                head = heads.LowRankHead(vocab_size, width, rank, torch.Generator().manual_seed(0))
                heads.fit_head(head, train, rate, experiment.training, seed=0)
                losses.append(heads.evaluate_head(head, validation)[0])
        return losses

    start = time.perf_counter()
    cache = {name: heads.backbone_features(model, windows[name]) for name in ("train", "validation")}
    cached = sweep(cache.__getitem__)
    cached_seconds = time.perf_counter() - start

    start = time.perf_counter()
    naive = sweep(lambda name: heads.backbone_features(model, windows[name]))  # the backbone again for every head
    naive_seconds = time.perf_counter() - start

    configurations = len(RANKS) * len(RATES)
    print(f"sweep: tiny-d128, {configurations} heads (ranks {RANKS} x rates {RATES}), {TRAIN_TOKENS} training tokens")
    print(f"threads: {torch.get_num_threads()}")
    print(f"cached features (satlib): {cached_seconds:7.2f} s")
    print(f"backbone per head:        {naive_seconds:7.2f} s")
    print(f"speed-up: {naive_seconds / cached_seconds:.2f}x")
    difference = float(np.max(np.abs(np.array(cached) - np.array(naive))))
    print(f"largest loss difference: {difference:.2e}")
    return 0 if difference < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
