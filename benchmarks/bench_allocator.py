"""Benchmark: the suite trainer's step under glibc's default allocator settings, then under the Makefile's.

Run: ``.venv/bin/python benchmarks/bench_allocator.py`` (outside ``make``, so that the environment does not already
hold ``MALLOC_MMAP_THRESHOLD_``). For each width of the ``tiny`` suite, times training steps first with glibc's
defaults (freed blocks of a few MB go back to the system, and the next step faults in fresh pages), then, in the
same process, after ``mallopt`` sets what the Makefile exports (keep freed blocks up to 32 MB for reuse), and
prints tokens per second and their ratio. The two runs start from the same weights and must give the same losses:
the allocator changes the speed, never the result.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

from satlib import presets, tokenization, training
from satlib.specs import SuiteSpec

STEPS = 12
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def losses_and_speed(spec: SuiteSpec, width: int, tokens: torch.Tensor) -> tuple[list[float], float]:
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(training.model_config(spec, width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    offsets = torch.arange(spec.context + 1)
    losses = []
    for step in range(STEPS + 2):
        if step == 2:  # two warm-up steps
            start = time.perf_counter()
        windows = tokens[torch.from_numpy(training.batch_starts(spec, len(tokens), step))[:, None] + offsets]
        hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state
        weight = model.get_output_embeddings().weight
        loss = training.chunked_cross_entropy(hidden.reshape(-1, width), weight, windows[:, 1:].reshape(-1))
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses, STEPS * spec.tokens_per_step / (time.perf_counter() - start)


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        raise SystemExit("run this outside make: MALLOC_MMAP_THRESHOLD_ is already set, so there is no baseline")
    libc = ctypes.CDLL("libc.so.6")
    spec = presets.TINY_SUITE
    tokens = torch.from_numpy(np.array(tokenization.token_ids("train", spec.vocab_size), dtype=np.int64))
    torch.set_num_threads(1)  # as the suite trains
    baseline = {width: losses_and_speed(spec, width, tokens) for width in spec.widths}
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    print(f"one thread, batch {spec.batch_size} x {spec.context}, vocab {spec.vocab_size}")
    for width in spec.widths:
        losses, tuned = losses_and_speed(spec, width, tokens)
        assert losses == baseline[width][0], "the allocator changed a loss"
        print(f"d={width:4d}: glibc defaults {baseline[width][1]:8.0f} tok/s, Makefile's settings {tuned:8.0f} tok/s, "
              f"ratio {tuned / baseline[width][1]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
