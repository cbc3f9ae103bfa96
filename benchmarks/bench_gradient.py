"""Benchmark: the training loops and the measurement of chapter 09, as ratios against a baseline in the same process.

Run: ``.venv/bin/python benchmarks/bench_gradient.py``. Prints

* the rank-cut experiment's steps (the tiny suite's recipe at the grid's width): tokens per second of the full head,
  and the ratios of the factorised head and of the backward cut (one eigendecomposition of the D x D Gram matrix
  per step) to it;
* SpamLang's step at every vocabulary of the ``cpu`` grid, as a ratio to the smallest vocabulary;
* ``gradient_split`` (streamed, float64) against a brute-force projection that forms the V x V projector.
"""

from __future__ import annotations

import time

import torch
from transformers import GPTNeoXForCausalLM

from satlib import gradient_bottleneck as gb
from satlib import gradient_runs, training

STEPS = 10


def _steps_per_second(step: callable) -> float:
    for _ in range(2):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS / (time.perf_counter() - start)


def rank_cut_rates(grid: gradient_runs.GradientGrid) -> dict[str, float]:
    spec, width = grid.cut_spec(1), grid.cut_width
    windows = torch.randint(
        spec.vocab_size, (spec.batch_size, spec.context + 1), generator=torch.Generator().manual_seed(0)
    )
    rates = {}
    for arm in gradient_runs.ARMS:
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(training.model_config(spec, width))
        head = (
            gb.FactorisedHead(spec.vocab_size, width, grid.cut_ranks[0])
            if arm == "factorised head"
            else model.get_output_embeddings()
        )
        parameters = [*model.gpt_neox.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=1e-3)

        def step(arm: str = arm, model: GPTNeoXForCausalLM = model, head: torch.nn.Module = head,
                 optimizer: torch.optim.Optimizer = optimizer) -> None:  # fmt: skip
            hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, width)
            weight = head.weight
            if arm == "backward cut":
                hidden = gb.backward_rank_cut(hidden, weight, grid.cut_ranks[0])
            loss = training.chunked_cross_entropy(hidden, weight, windows[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        rates[arm] = _steps_per_second(step) * spec.tokens_per_step
    return rates


def spamlang_rates(grid: gradient_runs.GradientGrid, width: int) -> dict[int, float]:
    rates = {}
    for vocab in grid.vocabs:
        spec = grid.spamlang_spec(vocab, width, 3e-3, 1)
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(training.model_config(spec, width))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        symbols = gradient_runs.pool_symbols(vocab, None)
        counter = iter(range(10**9))

        def step(model: GPTNeoXForCausalLM = model, optimizer: torch.optim.Optimizer = optimizer,
                 symbols: torch.Tensor = symbols, counter: object = counter) -> None:  # fmt: skip
            windows = gradient_runs.spamlang_windows(symbols, grid.batch_size, grid.context, 1, next(counter))
            hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, width)
            loss = training.chunked_cross_entropy(
                hidden, model.get_output_embeddings().weight, windows[:, 1:].reshape(-1)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        rates[vocab] = _steps_per_second(step) * grid.batch_size * grid.context
    return rates


def split_rates(vocab: int = 4096, dim: int = 64, tokens: int = 1024) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, dim, generator=generator)
    head = torch.randn(vocab, dim, generator=generator)
    targets = torch.randint(vocab, (tokens,), generator=generator)

    def brute() -> None:
        gradient = gb.logit_gradient((hidden @ head.T).double(), targets)
        projector = head.double() @ torch.linalg.pinv(head.double())
        float((gradient - gradient @ projector).norm() / gradient.norm())

    return _steps_per_second(lambda: gb.gradient_split(hidden, head, targets)), _steps_per_second(brute)


def main() -> None:
    grid = gradient_runs.GRIDS["cpu"]
    print(f"threads {torch.get_num_threads()}")
    cut = rank_cut_rates(grid)
    full = cut["full head"]
    print(f"rank cut, d={grid.cut_width}, r={grid.cut_ranks[0]}: full head {full:,.0f} tok/s; "
          + ", ".join(f"{arm} x{rate / full:.2f}" for arm, rate in cut.items() if arm != "full head"))  # fmt: skip
    for width in grid.widths:
        rates = spamlang_rates(grid, width)
        smallest = rates[min(rates)]
        print(f"SpamLang d={width}: V={min(rates)} {smallest:,.0f} tok/s; "
              + ", ".join(f"V={v} x{rate / smallest:.2f}" for v, rate in rates.items() if v != min(rates)))  # fmt: skip
    streamed, brute = split_rates()
    print(f"gradient_split (V=4096, D=64, 1,024 tokens): {streamed:.1f}/s, brute-force projector {brute:.1f}/s, "
          f"ratio x{streamed / brute:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
