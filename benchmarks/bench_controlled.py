"""Benchmark: how fast the controlled experiment's students train, against the plain transformers loop, same process.

Run: ``.venv/bin/python benchmarks/bench_controlled.py``. For widths below and above the synthetic language's rank,
times training steps on fresh batches of the language (the sampler included) with (a) the book's step,
``satlib.training.chunked_cross_entropy`` on the backbone's hidden states, and (b) the plain
``model(input_ids, labels=...)`` loss of ``transformers``; prints tokens per second and their ratio, and the
sampler's own share. Both start from the same weights and must give the same first loss. Then the arms of the
factors grid against its base student (batch 64, parallel blocks), the book's step: the batch sizes and sequential
blocks, as ratios of tokens per second.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from transformers import GPTNeoXForCausalLM

from satlib import controlled, training

STEPS = 20


def tokens_per_second(grid: controlled.ControlledGrid, student: controlled.Student, book: bool) -> tuple[float, float]:
    spec, width, data = grid.spec(student), student.width, grid.batches(student)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(training.model_config(spec, width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    first_loss = float("nan")
    for step in range(STEPS + 2):
        if step == 2:  # two warm-up steps
            start = time.perf_counter()
        windows = data.batch(spec, step)
        if book:
            hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state
            weight = model.get_output_embeddings().weight
            loss = training.chunked_cross_entropy(hidden.reshape(-1, width), weight, windows[:, 1:].reshape(-1))
        else:
            loss = model(input_ids=windows, labels=windows).loss
        if step == 0:
            first_loss = float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return STEPS * spec.tokens_per_step / (time.perf_counter() - start), first_loss


def sampler_tokens_per_second(grid: controlled.ControlledGrid, batch_size: int) -> float:
    language = grid.language(1.0)
    start = time.perf_counter()
    for step in range(STEPS):
        language.batch(step, batch_size, grid.context, 1)
    return STEPS * batch_size * grid.context / (time.perf_counter() - start)


def arms_against_the_base(grid: controlled.ControlledGrid, width: int) -> None:
    base = controlled.Student(width, batch_size=64)
    reference, _ = tokens_per_second(grid, base, book=True)
    print(f"d={width} base (batch 64, parallel): {reference:8.0f} tok/s")
    for change in ({"batch_size": 16}, {"batch_size": 256}, {"parallel": False}):
        speed, _ = tokens_per_second(grid, dataclasses.replace(base, **change), book=True)
        print(f"  {change}: {speed:8.0f} tok/s, ratio to the base {speed / reference:.2f}")


def main() -> None:
    grid = controlled.GRIDS["factors"]
    print(f"threads {torch.get_num_threads()}, vocabulary {grid.vocab_size}, rank {grid.rank}, context {grid.context}")
    print(f"sampler alone: {sampler_tokens_per_second(grid, 256):,.0f} tokens/s")
    for width in (4, 8, 32, 64):
        student = controlled.Student(width, batch_size=256)
        fast, loss_fast = tokens_per_second(grid, student, book=True)
        plain, loss_plain = tokens_per_second(grid, student, book=False)
        assert abs(loss_fast - loss_plain) < 1e-4, (loss_fast, loss_plain)
        print(f"d={width:4d}: book's step {fast:8.0f} tok/s, plain loop {plain:8.0f} tok/s, ratio {fast / plain:.2f}")
    arms_against_the_base(grid, 4)


if __name__ == "__main__":
    main()
