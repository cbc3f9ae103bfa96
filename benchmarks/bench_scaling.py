"""Benchmark: the batched Chinchilla fit against a per-start scipy L-BFGS-B loop, same data, same process.

Run: ``.venv/bin/python benchmarks/bench_scaling.py``. Prints both times, their ratio and both best objectives
(which must agree: the script exits non-zero if the batched fit is worse).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from scipy.optimize import minimize

from satlib import scaling


def main() -> int:
    rng = np.random.default_rng(0)
    n = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 60))
    d = np.exp(rng.uniform(np.log(1e9), np.log(1e12), 60))
    loss = scaling.chinchilla_loss(n, d, 1.69, 406.4, 410.7, 0.34, 0.28) * np.exp(rng.normal(0, 0.005, 60))

    start = time.perf_counter()
    fit = scaling.fit_chinchilla(n, d, loss)
    batched_seconds = time.perf_counter() - start

    objective = scaling.HuberObjective(n, d, loss, {}, 1e-3)
    start = time.perf_counter()
    best = np.inf
    for x0 in scaling.initial_grid():
        result = minimize(lambda x: tuple(v[0] for v in objective(x[None])), x0, jac=True, method="L-BFGS-B")
        best = min(best, result.fun)
    loop_seconds = time.perf_counter() - start

    print("data: 60 points, 4500 starts, all five parameters free")
    print(f"batched L-BFGS (satlib): {batched_seconds:7.2f} s  best objective {fit.objective:.12e}")
    print(f"scipy L-BFGS-B loop:     {loop_seconds:7.2f} s  best objective {best:.12e}")
    print(f"speed-up: {loop_seconds / batched_seconds:.1f}x")
    return 0 if fit.objective <= best * (1 + 1e-6) else 1


if __name__ == "__main__":
    sys.exit(main())
