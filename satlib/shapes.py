"""Wider or deeper at one parameter budget (experiments layer; the open question of paper §6).

The paper's §6 calls shallower, wider small models an unpromising direction (citing Merrill et al. 2022, Tay et
al. 2022, Petty et al. 2023), while its own argument says a wider head raises the rank bound. This experiment trains
(width, layers) pairs of (almost) one parameter budget on the ``tiny`` suite's recipe, data order and steps, with
several seeds, and measures every evenly spaced checkpoint through :mod:`satlib.sweep` like the long runs.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import replace

import pandas as pd

from satlib.claims import CLAIMS
from satlib.long_run import corpus_samples
from satlib.presets import TINY_SUITE
from satlib.saturation import derived_columns, saturation_verdict
from satlib.specs import SuiteSpec
from satlib.sweep import measure_trained
from satlib.training import BatchSource, CorpusBatches, ensure_trained
from satlib.verdicts import Claim, compare

#: (width, layers) pairs of one budget: (64, 2) is the suite's own ``tiny-d64`` (624,384 parameters); (48, 8) has
#: 0.8% fewer. Narrower than the suite's largest pair (128 against 96 with 6 layers, which the book used before) so
#: that three seeds of each fit the build's time.
SHAPES: tuple[tuple[int, int], ...] = ((64, 2), (48, 8))
#: Seeds of each shape (initialisation and data order): the spread between them is what a difference must beat.
SHAPE_SEEDS: tuple[int, ...] = (0, 1, 2)


def shape_spec(width: int, layers: int, base: SuiteSpec = TINY_SUITE, seed: int = 0) -> SuiteSpec:
    """The suite that trains a (width, layers) model with ``seed``: ``base`` itself when it holds that model (its
    cache is reused), else ``base`` with that one width, depth and seed."""
    if layers == base.n_layers and width in base.widths and seed == base.seed:
        return base
    return replace(base, name=f"{base.name}-shapes", widths=(width,), n_layers=layers, seed=seed)


def shape_runs(
    shapes: tuple[tuple[int, int], ...] = SHAPES, seeds: tuple[int, ...] = SHAPE_SEEDS, base: SuiteSpec = TINY_SUITE
) -> list[tuple[SuiteSpec, int, BatchSource]]:
    """(suite, width, data) of every model of the comparison, for :func:`satlib.training.ensure_trained`."""
    data = CorpusBatches(base.vocab_size)
    return [(shape_spec(width, layers, base, seed), width, data) for width, layers in shapes for seed in seeds]


def shape_comparison(
    shapes: tuple[tuple[int, int], ...] = SHAPES,
    seeds: tuple[int, ...] = SHAPE_SEEDS,
    base: SuiteSpec = TINY_SUITE,
    jobs: int = 1,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Train (once; cached) and measure every shape and seed at every evenly spaced checkpoint (``executor``: where
    the measurements run, see :func:`satlib.sweep.sweep`).

    Returns:
        One row per shape, seed and checkpoint: ``run`` (e.g. ``d=96, 6 layers``), ``width``, ``layers``, ``seed``,
        ``parameters``, ``step``, ``tokens``, the measurements and :func:`satlib.saturation.derived_columns`.
    """
    runs = shape_runs(shapes, seeds, base)
    ensure_trained(runs, jobs)
    table = measure_trained(runs, corpus_samples(base.vocab_size, base.context), evenly_spaced=True, executor=executor)
    table = table.assign(run=[f"d={w}, {n} layers" for w, n in zip(table.width, table.layers, strict=True)])
    return derived_columns(table)


def shapes_claim(table: pd.DataFrame, base: SuiteSpec = TINY_SUITE) -> Claim:
    """The ledger record of wider against deeper (:func:`shape_comparison`): the final held-out losses of the two
    shapes, paired by seed (:func:`satlib.verdicts.compare`), and whether either saturated. Both shapes train at
    ``base``'s recipe and peak learning rate, not tuned per shape, so the finding names that budget and that rate."""
    final = table[table.step == table.step.max()]
    runs = list(dict.fromkeys(final.run))
    wide, deep = (final[final.run == run].set_index("seed").heldout_loss for run in runs[:2])
    seeds = [seed for seed in wide.index if seed in deep.index]
    versus = compare(wide[seeds], deep[seeds])
    verdicts = saturation_verdict(table.assign(run=table.run + " seed " + table.seed.astype(str)))
    word = {"lower": f"{runs[0]} is better", "higher": f"{runs[1]} is better"}.get(
        versus.direction, "no clear difference"
    )
    finding = (f"{word} at this budget and this rate ({final.tokens_per_parameter.max():.1f} tokens per parameter, "
               f"{base.steps:,} steps, peak learning rate {base.peak_lr:g} for both shapes; "
               f"{versus.difference:+.3f} nats, seed range {versus.spread:.3f})")  # fmt: skip
    book = (f"final held-out loss {runs[0]} {wide[seeds].mean():.3f}, {runs[1]} {deep[seeds].mean():.3f} over "
            f"{len(seeds)} seeds; {int(verdicts.saturated.sum())} of {len(verdicts)} runs saturate")  # fmt: skip
    caveats = ["one seed" if versus.one_seed else "",
               f"{final.tokens_per_parameter.max():.1f} tokens per parameter: far from saturation",
               f"one peak learning rate ({base.peak_lr:g}, the suite's) for both shapes, not chosen per shape on "
               "validation: another rate could change the order"]  # fmt: skip
    return CLAIMS["x-wide-vs-deep"].judge(finding, book, "this book's models trained alike on the corpus", caveats)
