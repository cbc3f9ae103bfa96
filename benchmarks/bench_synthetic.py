"""Benchmark: training windows from the synthetic language (satlib.synthetic.SyntheticLanguage.batch, one
vectorised inverse-CDF search per position) against two naive samplers of the same windows, same world, same
process, one thread: one ``torch.multinomial`` call per position over the gathered rows of P (the first trial's
sampler), and one ``numpy`` ``Generator.choice`` call per token.

Run: ``.venv/bin/python benchmarks/bench_synthetic.py``. The world: V = 1,024, rank 64, zipf 1, the trial's scale
(3 / 64**0.25); windows of 64 + 1 tokens, 256 per batch. Prints tokens per second of each sampler (and of the
resumable stream ``sample``), the speed-ups, and each sampler's mean loss under the true distribution, which must
agree with the exact entropy rate within four standard errors (the script exits non-zero otherwise).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from satlib.synthetic import SyntheticLanguage

BATCH, CONTEXT, BATCHES, CHOICE_BATCHES = 256, 64, 40, 2


def multinomial_batch(probs: torch.Tensor, stationary: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    tokens = torch.empty(BATCH, CONTEXT + 1, dtype=torch.int64)
    tokens[:, 0] = torch.multinomial(stationary.expand(BATCH, -1), 1, generator=generator)[:, 0]
    for t in range(1, CONTEXT + 1):
        tokens[:, t] = torch.multinomial(probs[tokens[:, t - 1]], 1, generator=generator)[:, 0]
    return tokens


def choice_batch(probs: np.ndarray, stationary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    tokens = np.empty((BATCH, CONTEXT + 1), dtype=np.int64)
    vocab = len(stationary)
    for i in range(BATCH):
        tokens[i, 0] = rng.choice(vocab, p=stationary)
        for t in range(1, CONTEXT + 1):
            tokens[i, t] = rng.choice(vocab, p=probs[tokens[i, t - 1]])
    return tokens


def agrees(language: SyntheticLanguage, windows: np.ndarray) -> tuple[float, float]:
    """Mean exact loss of the windows' targets and its distance to the entropy rate in standard errors."""
    losses = -language.log_probs()[windows[:, :-1], windows[:, 1:]].mean(axis=1)  # one mean per independent window
    standard_error = losses.std(ddof=1) / np.sqrt(len(losses))
    return float(losses.mean()), abs(float(losses.mean()) - language.entropy_rate()) / standard_error


def main() -> int:
    torch.set_num_threads(1)
    language = SyntheticLanguage(1024, 64, zipf=1.0, seed=0, scale=3 / 64**0.25)
    language.batch(0, 1, 1, seed=0)  # build the cumulative tables outside the timing
    tokens_per_batch = BATCH * (CONTEXT + 1)

    start = time.perf_counter()
    ours = np.concatenate([language.batch(step, BATCH, CONTEXT, seed=0).numpy() for step in range(BATCHES)])
    ours_rate = BATCHES * tokens_per_batch / (time.perf_counter() - start)

    probs, stationary = (
        torch.from_numpy(np.exp(language.log_probs())),
        torch.from_numpy(np.array(language.stationary())),
    )
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    multinomial = np.concatenate([multinomial_batch(probs, stationary, generator).numpy() for _ in range(BATCHES)])
    multinomial_rate = BATCHES * tokens_per_batch / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    choice = np.concatenate(
        [choice_batch(probs.numpy(), stationary.numpy(), rng) for _ in range(CHOICE_BATCHES)]
    )  # fmt: skip
    choice_rate = CHOICE_BATCHES * tokens_per_batch / (time.perf_counter() - start)

    language.sample(1, seed=0)  # the mixing time and bridge tables
    start = time.perf_counter()
    language.sample(2**20, seed=0)
    stream_rate = 2**20 / (time.perf_counter() - start)

    print(f"world: V = {language.vocab_size}, rank {language.rank}, zipf {language.zipf}, scale {language.scale:.3f}")
    print(f"windows: {BATCH} x {CONTEXT + 1} tokens per batch, threads: {torch.get_num_threads()}")
    print(f"satlib batch (vectorised inverse CDF): {ours_rate:12,.0f} tokens/s")
    print(f"torch.multinomial per position:        {multinomial_rate:12,.0f} tokens/s")
    print(f"numpy choice per token:                {choice_rate:12,.0f} tokens/s")
    print(f"satlib sample (resumable stream):      {stream_rate:12,.0f} tokens/s")
    print(f"speed-up over torch.multinomial: {ours_rate / multinomial_rate:.1f}x; over numpy choice: "
          f"{ours_rate / choice_rate:.0f}x")  # fmt: skip
    print(f"entropy rate: {language.entropy_rate():.4f} nats")
    worst = 0.0
    for name, windows in (("satlib", ours), ("multinomial", multinomial), ("choice", choice)):
        mean, distance = agrees(language, windows)
        worst = max(worst, distance)
        print(f"mean loss of the {name} windows: {mean:.4f} nats ({distance:.1f} standard errors from it)")
    return 0 if worst < 4 else 1


if __name__ == "__main__":
    sys.exit(main())
