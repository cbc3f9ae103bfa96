"""The gradient bottleneck's experiments, trained here and frozen in a snapshot (experiments layer; Godey & Artzi
2026, beyond the paper; chapter 09).

* **SpamLang** at CPU scale: every sequence repeats one symbol, so predicting the next token is trivial and any
  difficulty is the optimiser's. One-layer GPT-NeoX models of width D learn it for vocabularies V; a run's
  difficulty is its steps to :data:`satlib.claims.SPAMLANG_ACCURACY` on held-out sequences. The confound: with a
  larger V each symbol is seen less often. The control draws every sequence from a fixed pool of symbols whatever V
  (the head still has V rows, so V/D grows and the data does not). The learning rate of each (V, D, pool) is chosen
  on validation sequences with a selection seed, then three other seeds are reported on test sequences.
* **Backward-only against forward rank cut** on the book's corpus, three arms of one backbone: the full head; a
  factorised rank-r head (:class:`satlib.gradient_bottleneck.FactorisedHead`: forward and backward limited); the full
  head whose gradient into the backbone is cut to rank r (:func:`satlib.gradient_bottleneck.backward_rank_cut`).

Each run's result is written atomically to the cache as it finishes, so a killed grid resumes; the weights are not
kept. ``python -m satlib gradient --grid cpu`` (``make gradient``) writes ``snapshots/gradient-<grid>.json``.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import GPTNeoXForCausalLM

from satlib import controlled
from satlib.claims import SPAMLANG_ACCURACY
from satlib.config import cache_dir, source_commit
from satlib.errors import ConfigurationError, MissingArtefactError, chosen
from satlib.evaluate import GRADIENT_WINDOWS, evaluation_windows, sample_windows
from satlib.gradient_bottleneck import FactorisedHead, backward_rank_cut
from satlib.models import SMOLLM2
from satlib.presets import Preset, get_preset
from satlib.specs import CorpusSample, SuiteSpec
from satlib.storage import digest, progress, read_json, write_json
from satlib.sweep import measure, measure_trained
from satlib.tokenization import token_ids
from satlib.training import CorpusBatches, chunked_cross_entropy, ensure_trained, model_config, worker_pool

SNAPSHOTS = Path(__file__).resolve().parent / "data_files" / "snapshots"
ARMS = ("full head", "factorised head", "backward cut")
#: Seeds of the held-out SpamLang sequences: validation chooses the learning rate, test reports.
HELD_OUT = {"validation": 10_001, "test": 10_002}


@dataclass(frozen=True)
class GradientGrid:
    """The two experiments of chapter 09.

    Attributes:
        vocabs, widths: SpamLang's V and D. pool: symbols the controlled arm draws from (the other arm: all V).
        context, batch_size: SpamLang windows per step. max_steps: a run that has not reached the accuracy stops
        here (counted as ``max_steps``: a lower bound). eval_every: steps between held-out evaluations of
        ``eval_windows`` sequences. rates: searched per (V, D, pool) with ``selection_seed``; seeds: reported.
        cut_width, cut_ranks, cut_steps, cut_layers, cut_vocab: the rank-cut experiment (the tiny suite's recipe;
        the full head once per seed, the two cut arms at every rank). cut_eval_tokens: validation and test
        tokens of each rank-cut run (the suite's 32,768; fewer for a rehearsal).
    """

    name: str
    vocabs: tuple[int, ...] = (256, 1024, 4096, 16384)
    widths: tuple[int, ...] = (16, 64)
    pool: int = 256
    context: int = 8
    batch_size: int = 64
    max_steps: int = 1000
    eval_every: int = 10
    eval_windows: int = 256
    rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    selection_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)
    cut_width: int = 32
    cut_ranks: tuple[int, ...] = (4, 16)
    cut_steps: int = 1200
    cut_layers: int = 2
    cut_vocab: int = 4096
    cut_curve_points: int = 6
    cut_eval_tokens: int = 32_768

    def cells(self) -> list[tuple[int, int, int | None]]:
        """(V, D, pool) of every SpamLang cell; ``None`` draws from all V (one cell when the pool covers V)."""
        pools = lambda vocab: [None] if self.pool >= vocab else [None, self.pool]  # noqa: E731
        return [(v, d, p) for v in self.vocabs for d in self.widths for p in pools(v)]

    def spamlang_spec(self, vocab: int, width: int, rate: float, seed: int) -> SuiteSpec:
        """One SpamLang run on the suite's recipe (warm-up, then a constant rate: ``max_steps`` is a cap)."""
        return SuiteSpec(name=f"spamlang-{self.name}", widths=(width,), n_layers=1, vocab_size=vocab,
                         context=self.context, batch_size=self.batch_size, steps=self.max_steps, peak_lr=rate,
                         seed=seed, schedule="constant")  # fmt: skip

    def cut_spec(self, seed: int) -> SuiteSpec:
        return SuiteSpec(name=f"rank-cut-{self.name}", widths=(self.cut_width,), n_layers=self.cut_layers,
                         vocab_size=self.cut_vocab, steps=self.cut_steps, seed=seed,
                         eval_tokens=self.cut_eval_tokens)  # fmt: skip


GRIDS = {
    "cpu": GradientGrid("cpu"),
    "micro": GradientGrid("micro", vocabs=(32, 128), widths=(8,), pool=32, max_steps=60, eval_every=10,
                          eval_windows=32, rates=(3e-3, 1e-2), seeds=(1, 2), cut_width=16, cut_ranks=(2,),
                          cut_steps=4, cut_layers=1, cut_curve_points=1, cut_eval_tokens=2_048),
}  # fmt: skip


def grid_named(name: str) -> GradientGrid:
    """A grid of :data:`GRIDS`, or a one-line error naming them."""
    return chosen(GRIDS, name, "gradient grid")


def pool_symbols(vocab: int, pool: int | None) -> torch.Tensor:
    """The symbols a SpamLang cell draws from: all V, or ``pool`` of them, fixed per V (the same for every seed)."""
    if pool is None or pool >= vocab:
        return torch.arange(vocab)
    return torch.from_numpy(np.sort(np.random.default_rng([vocab, pool]).choice(vocab, pool, replace=False)))


def spamlang_windows(symbols: torch.Tensor, count: int, context: int, seed: int, step: int) -> torch.Tensor:
    """(count, context + 1) windows, each one symbol of ``symbols`` repeated (step ``step`` of stream ``seed``)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    picked = symbols[torch.randint(len(symbols), (count,), generator=generator)]
    return picked[:, None].expand(count, context + 1).contiguous()


@torch.no_grad()
def _accuracy(model: GPTNeoXForCausalLM, windows: torch.Tensor) -> float:
    logits = model(input_ids=windows[:, :-1]).logits
    return float((logits.argmax(-1) == windows[:, 1:]).float().mean())


def _optimizer(parameters: list[torch.nn.Parameter], spec: SuiteSpec) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=spec.peak_lr, betas=(0.9, 0.95), eps=1e-8,
                             weight_decay=spec.weight_decay)  # fmt: skip


def spamlang_run(grid: GradientGrid, vocab: int, width: int, pool: int | None, rate: float, seed: int,
                 role: str) -> dict:  # fmt: skip
    """Train one SpamLang model until it reaches :data:`SPAMLANG_ACCURACY` on held-out sequences of ``role``
    (``validation`` or ``test``), or ``max_steps``. Returns its record, with the accuracy curve."""
    spec = grid.spamlang_spec(vocab, width, rate, seed)
    symbols = pool_symbols(vocab, pool)
    held = spamlang_windows(symbols, grid.eval_windows, grid.context, HELD_OUT[role], 0)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config(spec, width))
    optimizer = _optimizer(list(model.parameters()), spec)
    started, curve, reached, step = time.perf_counter(), [], None, 0
    while True:
        if step % grid.eval_every == 0 or step == grid.max_steps:
            curve.append([step, _accuracy(model, held)])
            if curve[-1][1] >= SPAMLANG_ACCURACY:
                reached = step
                break
        if step == grid.max_steps:
            break
        windows = spamlang_windows(symbols, grid.batch_size, grid.context, seed, step)
        for group in optimizer.param_groups:
            group["lr"] = spec.learning_rate(step)
        hidden = model.gpt_neox(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, width)
        loss = chunked_cross_entropy(hidden, model.get_output_embeddings().weight, windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
    seconds = time.perf_counter() - started
    return {"experiment": "spamlang", "role": role, "vocab": vocab, "width": width, "pool": pool or vocab,
            "pool_is_vocab": pool is None, "rate": rate, "seed": seed, "steps_to_accuracy": reached,
            "steps_run": step, "final_accuracy": curve[-1][1], "curve": curve, "seconds": round(seconds, 2),
            "tokens_per_second": round(step * spec.tokens_per_step / max(seconds, 1e-9))}  # fmt: skip


@torch.no_grad()
def _corpus_loss(backbone: torch.nn.Module, weight: torch.Tensor, windows: torch.Tensor) -> float:
    total = 0.0
    for start in range(0, len(windows), 16):
        batch = windows[start : start + 16]
        hidden = backbone(input_ids=batch[:, :-1]).last_hidden_state
        total += float(torch.nn.functional.cross_entropy((hidden @ weight.T).flatten(0, 1), batch[:, 1:].flatten(),
                                                         reduction="sum"))  # fmt: skip
    return total / windows[:, 1:].numel()


def rank_cut_run(grid: GradientGrid, arm: str, seed: int, rank: int | None = None) -> dict:
    """Train one arm of the rank-cut experiment on the corpus (the tiny suite's recipe at ``cut_width``; ``rank``
    for the two cut arms, None for the full head); its validation loss along training and its test loss."""
    if arm not in ARMS:
        raise ConfigurationError(f"unknown arm {arm!r}: use one of {list(ARMS)}")
    if (rank is None) != (arm == ARMS[0]):
        raise ConfigurationError(f"the {arm!r} arm needs {'no rank' if arm == ARMS[0] else 'a rank'}, got {rank}")
    spec = grid.cut_spec(seed)
    data = CorpusBatches(spec.vocab_size)
    splits = {split: evaluation_windows(token_ids(split, spec.vocab_size), spec.context, spec.eval_tokens)
              for split in ("validation", "test")}  # fmt: skip
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config(spec, grid.cut_width))
    backbone = model.gpt_neox
    head = FactorisedHead(spec.vocab_size, grid.cut_width, rank, seed=seed) if arm == ARMS[1] \
        else model.get_output_embeddings()  # fmt: skip
    parameters = [*backbone.parameters(), *head.parameters()]
    optimizer = _optimizer(parameters, spec)
    marks = set(np.linspace(0, spec.steps, grid.cut_curve_points + 1).round().astype(int).tolist())
    started, curve = time.perf_counter(), []
    for step in progress(range(spec.steps + 1), desc=f"{arm} seed {seed}", leave=False):
        if step in marks:
            curve.append([step, _corpus_loss(backbone, head.weight, splits["validation"])])
        if step == spec.steps:
            break
        windows = data.batch(spec, step)
        for group in optimizer.param_groups:
            group["lr"] = spec.learning_rate(step)
        hidden = backbone(input_ids=windows[:, :-1]).last_hidden_state.reshape(-1, grid.cut_width)
        weight = head.weight
        if arm == ARMS[2]:
            hidden = backward_rank_cut(hidden, weight, rank)
        loss = chunked_cross_entropy(hidden, weight, windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
    seconds = time.perf_counter() - started
    return {"experiment": "rank cut", "arm": arm, "seed": seed, "width": grid.cut_width, "rank": rank,
            "test_loss": _corpus_loss(backbone, head.weight, splits["test"]), "validation_loss": curve[-1][1],
            "curve": curve, "seconds": round(seconds, 2),
            "tokens_per_second": round(spec.steps * spec.tokens_per_step / max(seconds, 1e-9))}  # fmt: skip


def run_key(grid: GradientGrid, task: tuple) -> dict:
    """What one run depends on (its cache key): its own specification and task, not the rest of the grid."""
    if task[0] == "spamlang":
        vocab, width, pool, rate, seed, role = task[1:]
        return {"spec": grid.spamlang_spec(vocab, width, rate, seed).identity(), "pool": pool, "role": role,
                "eval": [grid.eval_every, grid.eval_windows], "accuracy": SPAMLANG_ACCURACY}  # fmt: skip
    arm, seed, rank = task[1:]
    return {"spec": grid.cut_spec(seed).identity(), "arm": arm, "rank": rank, "curve": grid.cut_curve_points}


def _cached(grid: GradientGrid, task: tuple) -> dict:
    """Run one task once: its record is kept in the cache (written atomically) under :func:`run_key`, so a killed
    grid resumes and a grid that adds runs trains only those."""
    path = cache_dir() / "gradient" / f"{task[0].replace(' ', '-')}-{digest(run_key(grid, task), 16)}.json"
    if path.is_file():
        return read_json(path)
    record = spamlang_run(grid, *task[1:]) if task[0] == "spamlang" else rank_cut_run(grid, *task[1:])
    write_json(path, record)
    return record


def chosen_rates(selection: pd.DataFrame) -> dict[tuple[int, int, int], float]:
    """The rate of each (V, D, pool) chosen on validation: fewest steps to the accuracy (a run that never reaches it
    counts as its ``steps_run``), then the higher final accuracy, then the smaller rate."""
    ranked = selection.assign(cost=selection.steps_to_accuracy.fillna(selection.steps_run),
                              negative_accuracy=-selection.final_accuracy)  # fmt: skip
    ranked = ranked.sort_values(["cost", "negative_accuracy", "rate"])
    return {(int(v), int(d), int(p)): float(g.rate.iloc[0]) for (v, d, p), g in
            ranked.groupby(["vocab", "width", "pool"], sort=False)}  # fmt: skip


def _run_all(grid: GradientGrid, tasks: list[tuple], jobs: int, bar: object) -> list[dict]:
    if jobs <= 1:
        records = []
        for task in tasks:
            records.append(_cached(grid, task))
            bar.update(1)
        return records
    with worker_pool(jobs) as pool:
        futures = [pool.submit(_cached, grid, task) for task in tasks]
        for _ in as_completed(futures):
            bar.update(1)
        return [future.result() for future in futures]


def run(grid: GradientGrid, jobs: int = 1, snapshot: Path | None = None) -> dict:
    """Every run of a grid (resumable), then its snapshot: the records and their provenance, no weights."""
    started = time.perf_counter()
    cut = [("rank cut", ARMS[0], seed, None) for seed in grid.seeds]
    cut += [("rank cut", arm, seed, rank) for rank in grid.cut_ranks for seed in grid.seeds for arm in ARMS[1:]]
    selection = [
        ("spamlang", v, d, p, rate, grid.selection_seed, "validation")
        for v, d, p in reversed(grid.cells())
        for rate in grid.rates
    ]  # fmt: skip  (largest V first)
    bar = progress(total=len(cut) + len(selection) + len(grid.cells()) * len(grid.seeds), desc="gradient grid",
                   unit="run")  # fmt: skip
    first = _run_all(grid, cut + selection, jobs, bar)
    rates = chosen_rates(pd.DataFrame([r for r in first if r["experiment"] == "spamlang"]))
    test = [("spamlang", v, d, p, rates[v, d, p or v], seed, "test")
            for v, d, p in reversed(grid.cells()) for seed in grid.seeds]  # fmt: skip
    records = first + _run_all(grid, test, jobs, bar)
    bar.close()
    provenance = {
        "command": " ".join(["python -m satlib", *sys.argv[1:]]) if sys.argv else "satlib.gradient_runs.run",
        "commit": source_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}",
        "jobs": jobs, "wall_seconds": round(time.perf_counter() - started),
        "cpu_seconds": round(sum(r["seconds"] for r in records)), "grid": asdict(grid),
    }  # fmt: skip
    result = {"provenance": provenance, "runs": records}
    write_json(snapshot or SNAPSHOTS / f"gradient-{grid.name}.json", result)
    return result


def load_snapshot(name: str, folder: Path = SNAPSHOTS) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A grid's snapshot: the SpamLang runs, the rank-cut runs and the provenance."""
    path = folder / f"gradient-{name}.json"
    if not path.is_file():
        raise MissingArtefactError(f"no snapshot of the gradient grid {name!r} at {path}: make it with "
                                   f"`make gradient GRID={name}`")  # fmt: skip
    snapshot = read_json(path, f"remake it with `make gradient GRID={name}`")
    runs = pd.DataFrame(snapshot["runs"])
    spam = runs[runs.experiment == "spamlang"].dropna(axis=1, how="all").reset_index(drop=True)
    cut = runs[runs.experiment == "rank cut"].dropna(axis=1, how="all").reset_index(drop=True)
    return spam, cut, snapshot["provenance"]


def cpu_hours(provenance: dict) -> float:
    """The grid's summed run time, in CPU hours (one thread per run)."""
    return provenance["cpu_seconds"] / 3600 if math.isfinite(provenance["cpu_seconds"]) else float("nan")


def _expanded(table: pd.DataFrame, family: str) -> pd.DataFrame:
    values = pd.DataFrame(list(table.pop("gradient_bottleneck")), index=table.index)
    return pd.concat([table.assign(family=family), values], axis=1)


def measured_fractions(preset: str | Preset = "tiny") -> pd.DataFrame:
    """The gradient split (:func:`satlib.evaluate.gradient_bottleneck`) of every checkpoint of the preset's suite on
    its evaluation sample, of SmolLM2-135M on the corpus's validation split (its own tokenizer), and of chapter 08's
    live students at each evenly spaced checkpoint on held-out windows of their language; each measured once
    through :mod:`satlib.sweep`.

    Returns:
        One row per checkpoint: ``family`` (suite, pretrained, controlled), ``model``, ``width``, ``step``,
        ``tokens`` (of training), ``destroyed``, ``visible_cosine``, ``step_cosine``, ``baseline``, ``rank``,
        ``vocab``, ``batch_tokens`` (measured on).
    """
    preset = get_preset(preset)
    names = ("gradient_bottleneck",)
    suite = measure(preset, names)
    sample = CorpusSample(SMOLLM2, "validation", 128, GRADIENT_WINDOWS * 128)
    pretrained = measure(preset, names, checkpoints=[(SMOLLM2, 0)], windows=sample_windows(sample, preset))
    grid = controlled.GRIDS["live"]
    runs = [run for run, s in zip(controlled.runs_of(grid), grid.students, strict=True) if s.switch is None]
    ensure_trained(runs)
    students = measure_trained(runs, {"evaluation": controlled.held_out(grid, 1.0)}, names, evenly_spaced=True)
    students = students.assign(model=[f"student d={w}" for w in students.width])
    columns = ["model", "width", "step", "tokens", "gradient_bottleneck"]
    parts = [_expanded(suite[columns], "suite"), _expanded(pretrained[columns], "pretrained"),
             _expanded(students[columns], "controlled")]  # fmt: skip
    return pd.concat(parts, ignore_index=True)
