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

from satlib import heads, models

RANKS, RATES, TRAIN_TOKENS, EVAL_TOKENS = (4, 32, 128), (3e-3, 3e-2), 32_768, 8_192


def main() -> int:
    experiment = heads.HeadExperiment("tiny-d128", RANKS, RATES, TRAIN_TOKENS, EVAL_TOKENS,
                                      training=heads.HeadTraining(epochs=1))  # fmt: skip
    train_windows, validation_windows = heads.experiment_windows(experiment, "tiny")
    model = models.load("tiny-d128", preset="tiny")
    vocab_size = model.get_output_embeddings().weight.shape[0]

    start = time.perf_counter()
    train = heads.backbone_features(model, train_windows)
    validation = heads.backbone_features(model, validation_windows)
    cached = heads.rank_sweep(train, validation, vocab_size, list(RANKS), list(RATES), experiment.training)
    cached_seconds = time.perf_counter() - start

    start = time.perf_counter()
    naive = []
    for rank in RANKS:
        for rate in RATES:  # the backbone runs again for every configuration
            train = heads.backbone_features(model, train_windows)
            validation = heads.backbone_features(model, validation_windows)
            head = heads.train_low_rank_head(*train, vocab_size, rank, rate, experiment.training)
            naive.append(heads.evaluate_head(head, *validation)[0])
    naive_seconds = time.perf_counter() - start

    configurations = len(RANKS) * len(RATES)
    print(f"sweep: tiny-d128, {configurations} heads (ranks {RANKS} x rates {RATES}), {TRAIN_TOKENS} training tokens")
    print(f"threads: {torch.get_num_threads()}")
    print(f"cached features (satlib): {cached_seconds:7.2f} s")
    print(f"backbone per head:        {naive_seconds:7.2f} s")
    print(f"speed-up: {naive_seconds / cached_seconds:.2f}x")
    difference = float(np.max(np.abs(cached.loss.to_numpy() - np.array(naive))))
    print(f"largest loss difference: {difference:.2e}")
    return 0 if difference < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
