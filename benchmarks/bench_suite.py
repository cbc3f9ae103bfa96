"""Benchmark: the suite trainer's step (chunked cross-entropy) against a plain transformers loop, same process.

Run: ``.venv/bin/python benchmarks/bench_suite.py``. For each width of the ``tiny`` suite, times a few training
steps on the same batches with (a) ``satlib.training.chunked_cross_entropy`` on the backbone's hidden states and
(b) the plain ``model(input_ids).logits`` followed by ``torch.nn.functional.cross_entropy``, and prints tokens
per second and their ratio. Both start from the same weights and must give the same first loss.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

from satlib import presets, tokenization, training
from satlib.specs import SuiteSpec

STEPS = 12


def tokens_per_second(spec: SuiteSpec, width: int, tokens: torch.Tensor, chunked: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(training.model_config(spec, width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    offsets = torch.arange(spec.context + 1)
    first_loss = float("nan")
    for step in range(STEPS + 2):
        if step == 2:  # two warm-up steps
            start = time.perf_counter()
        windows = tokens[torch.from_numpy(training.batch_starts(spec, len(tokens), step))[:, None] + offsets]
        if chunked:
            hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state
            weight = model.get_output_embeddings().weight
            loss = training.chunked_cross_entropy(hidden.reshape(-1, width), weight, windows[:, 1:].reshape(-1))
        else:
            logits = model(input_ids=windows[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, spec.vocab_size), windows[:, 1:].reshape(-1))
        if step == 0:
            first_loss = float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return STEPS * spec.tokens_per_step / (time.perf_counter() - start), first_loss


def main() -> None:
    spec = presets.TINY_SUITE
    tokens = torch.from_numpy(np.array(tokenization.token_ids("train", spec.vocab_size), dtype=np.int64))
    print(f"threads {torch.get_num_threads()}, batch {spec.batch_size} x {spec.context}, vocab {spec.vocab_size}")
    for width in spec.widths:
        fast, loss_fast = tokens_per_second(spec, width, tokens, chunked=True)
        plain, loss_plain = tokens_per_second(spec, width, tokens, chunked=False)
        assert abs(loss_fast - loss_plain) < 1e-4, (loss_fast, loss_plain)
        print(f"d={width:4d}: suite trainer {fast:8.0f} tok/s, plain loop {plain:8.0f} tok/s, ratio {fast / plain:.2f}")


if __name__ == "__main__":
    main()
