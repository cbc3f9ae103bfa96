"""Benchmark: evaluation throughput (tokens per second) of the held-out loss on whatever device is present.

Run: ``.venv/bin/python benchmarks/bench_device.py [--model tiny-d128] [--preset tiny] [--dtypes float32 bfloat16]``.
On a GPU box with the ``pythia`` preset, e.g. ``--preset pythia --model pythia-160m --tokens 262144``. Each row
is timed in this process after one warm-up pass; the ratios are against the first dtype on the same device.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from satlib import evaluate, models, presets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model", default="tiny-d128")
    parser.add_argument("--tokens", type=int, default=32_768)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = presets.get_preset(args.preset)
    windows = evaluate.sample_windows(preset.evaluation, preset)
    context = windows.shape[1] - 1
    windows = windows[: -(-args.tokens // context)]
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, threads {torch.get_num_threads()}")
    print(f"model: {args.model} ({args.preset}), {windows.shape[0] * context} tokens in windows of {context}")
    baseline = None
    for dtype in args.dtypes:
        model = models.load(args.model, preset=args.preset, device=device, dtype=dtype)
        evaluate.heldout_loss(model, windows[:2])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = evaluate.heldout_loss(model, windows)
        if device == "cuda":
            torch.cuda.synchronize()
        rate = windows.shape[0] * context / (time.perf_counter() - start)
        baseline = baseline or rate
        print(f"{dtype:>9}: {rate:12,.0f} tokens/s ({rate / baseline:.2f}x)  loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
