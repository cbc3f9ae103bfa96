"""A controlled test of the mechanism: does the softmax bottleneck alone make a small model saturate? (experiments
layer; beyond the paper).

Students (one-layer GPT-NeoX models on the book's recipe, :mod:`satlib.training`) are trained on a fresh stream
from a :class:`satlib.synthetic.SyntheticLanguage` whose next-token distribution has a known rank, never an epoch
twice, and measured at every checkpoint through :mod:`satlib.sweep` on held-out windows of the same language. Each
student is compared with the floors of its width (:mod:`satlib.bottleneck`: rank d, and the layer-norm class) and
the language's entropy rate. On an endless stream there is no overfitting: a late rise of held-out loss is
saturation, and a student whose stream changes worlds part-way is a positive control that must show one.

A :class:`ControlledGrid` is the experiment: one world, and students that vary the width around the rank and the
factors the disputed causes point to (batch size, weight decay, the final learning rate, parallel or sequential
blocks), with seeds. ``live`` runs in every book build (three students, about a minute); ``factors`` is ``make
controlled`` (about 50 minutes on 2 cores); ``gpu`` is the same design on a GPU machine, with far more tokens.
Each writes a frozen snapshot of measurements with its provenance; the chapter reads them, and
:mod:`satlib.controlled_verdicts` judges them.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from satlib.config import source_commit
from satlib.controlled_verdicts import DEFAULTS
from satlib.errors import ConfigurationError, MissingArtefactError, chosen
from satlib.long_run import training_provenance
from satlib.models import suite_group
from satlib.saturation import derived_columns
from satlib.specs import SCHEDULES, SuiteSpec
from satlib.storage import digest, read_json, write_json
from satlib.sweep import measure_trained
from satlib.synthetic import SyntheticLanguage
from satlib.training import ensure_trained, training_record

SNAPSHOTS = Path(__file__).resolve().parent / "data_files" / "snapshots"
#: Seed of the held-out windows every checkpoint is measured on (the training stream uses others).
HELD_OUT_SEED = 7_777
#: The factors of a student recorded beside each of its measurements (those the verdicts read).
STUDENT_COLUMNS = tuple(DEFAULTS)
#: The factors a grid may vary, and the values they accept.
FACTORS = {"schedule": SCHEDULES, "weight_decay": "a number >= 0", "zipf": "a number >= 0", "batch_size": "an int"}


@dataclass(frozen=True)
class SyntheticBatches:
    """Training windows drawn fresh from a synthetic language: step s is ``language.batch(s, ...)`` with this seed,
    so no window is ever seen twice and training resumes at any step. With ``switch`` (a fraction of the steps),
    the windows come from ``later`` from that step on: the positive control of the saturation detector, whose
    held-out loss (on ``language``) must rise."""

    language: SyntheticLanguage
    seed: int = 1
    later: SyntheticLanguage | None = None
    switch: float = 1.0

    @property
    def identity(self) -> str:
        switched = "" if self.later is None else f"-then-{digest(asdict(self.later), 10)}-at{self.switch:g}"
        return f"synthetic-{digest(asdict(self.language), 10)}-s{self.seed}{switched}"

    def batch(self, spec: SuiteSpec, step: int) -> torch.Tensor:
        switched = self.later is not None and step >= self.switch * spec.steps
        language = self.later if switched else self.language
        return language.batch(step, spec.batch_size, spec.context, self.seed)


@dataclass(frozen=True)
class Student:
    """One student of a grid: its width and the factors it varies (the grid's defaults elsewhere).

    ``final_lr``: the cosine schedule's last rate, as a fraction of the peak (Pythia: 0.1). ``parallel``: Pythia's
    parallel attention and MLP blocks, or sequential ones. ``switch``: the fraction of training after which the
    stream comes from another world (the positive control; ``None``: never). ``seed``: initialisation, data order
    and the training stream."""

    width: int
    schedule: str = "cosine"
    weight_decay: float = 0.1
    zipf: float = 1.0
    batch_size: int = 256
    tokens: int | None = None  # default: the grid's
    final_lr: float = 0.1
    parallel: bool = True
    switch: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ConfigurationError(f"a student's width must be an integer >= 1, got {self.width!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigurationError(f"unknown schedule {self.schedule!r}: use one of {list(SCHEDULES)}")
        if self.weight_decay < 0 or self.zipf < 0 or self.batch_size < 1 or not 0 <= self.final_lr <= 1:
            raise ConfigurationError(f"bad factor in {self}: weight_decay and zipf >= 0, batch_size >= 1, "
                                     "final_lr in [0, 1]")  # fmt: skip
        if self.switch is not None and not 0 < self.switch < 1:
            raise ConfigurationError(f"a student's switch is a fraction of its steps in (0, 1), got {self.switch}")

    @property
    def extras(self) -> list[str]:
        """The factors that differ from Pythia's recipe beyond the first five (none for the first grids)."""
        return [*([f"final lr {self.final_lr:g}"] if self.final_lr != 0.1 else []),
                *([] if self.parallel else ["sequential"]),
                *([f"switch at {self.switch:g}"] if self.switch is not None else []),
                *([f"seed {self.seed}"] if self.seed else [])]  # fmt: skip

    @property
    def label(self) -> str:
        return ", ".join([f"d={self.width}, {self.schedule}, wd {self.weight_decay:g}, zipf {self.zipf:g}, "
                          f"batch {self.batch_size}", *self.extras])  # fmt: skip

    @property
    def slug(self) -> str:
        """A short name for files and the result store."""
        extras = "".join(f"-{extra}".replace(" ", "") for extra in self.extras)
        return f"d{self.width}-{self.schedule}-wd{self.weight_decay:g}-z{self.zipf:g}-b{self.batch_size}{extras}"


@dataclass(frozen=True)
class ControlledGrid:
    """One world and its students.

    Attributes:
        name: ``live``, ``cpu`` or ``gpu`` (names the snapshot). vocab_size, rank, scale, world_seed: the
        language (its ``zipf`` is each student's). tokens: training tokens of every student. context: tokens per
        window. peak_lr: after a 1% warm-up. held_out_windows: windows of ``context`` tokens measured at every
        checkpoint. checkpoints: evenly spaced checkpoints (after the early powers of two).
    """

    name: str
    students: tuple[Student, ...]
    tokens: int
    vocab_size: int = 1024
    rank: int = 64
    scale: float = 3 / 64**0.25
    world_seed: int = 0
    context: int = 64
    peak_lr: float = 3e-3
    held_out_windows: int = 256
    checkpoints: int = 20

    def language(self, zipf: float) -> SyntheticLanguage:
        return SyntheticLanguage(self.vocab_size, self.rank, zipf, self.world_seed, self.scale)

    def spec(self, student: Student) -> SuiteSpec:
        """The suite that trains one student (a one-layer GPT-NeoX, as the world's first trial)."""
        steps = max(100, (student.tokens or self.tokens) // (student.batch_size * self.context))
        return SuiteSpec(
            name=f"controlled-{self.name}-{student.slug}", widths=(student.width,), n_layers=1,
            vocab_size=self.vocab_size,
            context=self.context, batch_size=student.batch_size, steps=steps, peak_lr=self.peak_lr,
            checkpoints_evenly=self.checkpoints, schedule=student.schedule, weight_decay=student.weight_decay,
            final_lr_fraction=student.final_lr, parallel_residual=student.parallel, seed=student.seed,
        )  # fmt: skip

    def batches(self, student: Student) -> SyntheticBatches:
        """The student's training stream (from another world, ``world_seed + 1``, after its switch)."""
        later = None if student.switch is None else replace(self.language(student.zipf), seed=self.world_seed + 1)
        return SyntheticBatches(self.language(student.zipf), 1 + student.seed, later, student.switch or 1.0)


def _factors(width: int, seeds: int) -> tuple[Student, ...]:
    """One factor at a time around a base student (batch 64, weight decay 0.1, final rate 10% of the peak,
    parallel blocks): batch size, weight decay, the final learning rate and the blocks, each with ``seeds`` seeds
    (Kulkarni et al. 2026's factors)."""
    base = Student(width, batch_size=64)
    changes = ({}, {"batch_size": 16}, {"batch_size": 256}, {"weight_decay": 0.0}, {"weight_decay": 0.5},
               {"final_lr": 0.0}, {"parallel": False})  # fmt: skip
    return tuple(replace(base, **change, seed=seed) for change in changes for seed in range(seeds))


#: ``live``: one student below the rank, one above it and the positive control (the world changes halfway), in
#: every book build (about a minute on a CPU). ``factors``: ``make controlled``, a smaller world (V = 256, rank 32)
#: in which width 4 reaches 13,000 tokens per parameter in minutes: each arm of :func:`_factors` with three seeds,
#: width 64 above the rank, and the positive control (about 50 minutes on 2 cores). ``gpu``: the same design in
#: the first world (V = 1,024, rank 64) at width 8, with 128 above the rank and 200M tokens per student (11,600 tokens
#: per parameter at width 8): ``make controlled GRID=gpu`` on a GPU machine.
GRIDS: dict[str, ControlledGrid] = {
    "live": ControlledGrid("live", (Student(8, batch_size=64), Student(128, batch_size=64),
                                    Student(8, batch_size=64, switch=0.5)), tokens=1_250_000,
                           held_out_windows=128, checkpoints=10),
    "factors": ControlledGrid("factors", (*_factors(4, 3), Student(64, batch_size=64),
                                          Student(4, batch_size=64, switch=0.75)),
                              tokens=30_000_000, vocab_size=256, rank=32, scale=3 / 32**0.25),
    "gpu": ControlledGrid("gpu", (*_factors(8, 3), Student(128, batch_size=64), Student(8, batch_size=64, switch=0.75)),
                          tokens=200_000_000, held_out_windows=1024, checkpoints=40),
}  # fmt: skip


def grid_named(name: str) -> ControlledGrid:
    """A grid of :data:`GRIDS`, or a one-line error naming them."""
    return chosen(GRIDS, name, "grid")


def scaled(grid: ControlledGrid, tokens: int) -> ControlledGrid:
    """The same grid with ``tokens`` per student (and students' own budgets scaled alike): a quick rehearsal of a
    long grid before it runs (its cache and result names stay apart, under ``<name>-<tokens>``)."""
    factor = tokens / grid.tokens
    students = tuple(replace(s, tokens=None if s.tokens is None else max(1, int(s.tokens * factor)))
                     for s in grid.students)  # fmt: skip
    return replace(grid, name=f"{grid.name}-{tokens}", students=students, tokens=tokens)


def runs_of(grid: ControlledGrid) -> list[tuple[SuiteSpec, int, SyntheticBatches]]:
    """(suite, width, training data) of every student, for :func:`satlib.training.ensure_trained`."""
    return [(grid.spec(s), s.width, grid.batches(s)) for s in grid.students]


def held_out(grid: ControlledGrid, zipf: float) -> torch.Tensor:
    """The held-out windows of a grid's language (a seed no training step uses)."""
    return grid.language(zipf).batch(0, grid.held_out_windows, grid.context, HELD_OUT_SEED)


def floors(grid: ControlledGrid) -> pd.DataFrame:
    """The floors of every student's width (rank d, and the layer-norm class: rank d - 1 plus a bias) and the
    entropy rate of its language: one row per (zipf, width) (each language's
    :meth:`satlib.synthetic.SyntheticLanguage.floor_table`, cached there)."""
    rows = []
    for zipf in sorted({s.zipf for s in grid.students}):
        language = grid.language(zipf)
        widths = sorted({s.width for s in grid.students if s.zipf == zipf})
        table = language.floor_table(widths, layer_norm=True)
        rows += [{"zipf": zipf, **row} for row in table.to_dict(orient="records")]
    return pd.DataFrame(rows)


def measure(grid: ControlledGrid, jobs: int = 1, device: str = "cpu") -> pd.DataFrame:
    """Train every student (once; cached and resumable) and measure each checkpoint on held-out windows.

    Returns:
        One row per student and checkpoint: the student's factors, ``step``, ``tokens``, the measurements, the
        floor and entropy rate, ``gap_to_floor``, ``gap_to_entropy`` and :func:`satlib.saturation.derived_columns`.
    """
    runs = runs_of(grid)
    ensure_trained(runs, jobs, device)
    names = ("heldout_loss", "anisotropy_profile", "head_singular_values")
    tables = []
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads or CUDA
    with ProcessPoolExecutor(jobs, mp_context=context) if jobs > 1 else nullcontext() as executor:
        for zipf in sorted({s.zipf for s in grid.students}):
            chosen = [(run, s) for run, s in zip(runs, grid.students, strict=True) if s.zipf == zipf]
            data = {"evaluation": held_out(grid, zipf)}
            table = measure_trained([run for run, _ in chosen], data, names, executor=executor, device=device)
            by_group = {suite_group(spec, data.identity): student for (spec, _, data), student in chosen}
            students = [by_group[group] for group in table.group]
            factors = {name: [getattr(s, name) for s in students] for name in STUDENT_COLUMNS}
            tables.append(table.assign(student=[s.label for s in students], zipf=zipf, **factors))
    table = pd.concat(tables, ignore_index=True)
    floor = floors(grid).set_index(["zipf", "d"])
    for column in ("floor", "floor_layer_norm", "entropy_rate"):
        table[column] = [float(floor[column][z, w]) for z, w in zip(table.zipf, table.width, strict=True)]
    table["gap_to_floor"] = table.heldout_loss - table.floor
    table["gap_to_layer_norm_floor"] = table.heldout_loss - table.floor_layer_norm
    table["gap_to_entropy"] = table.heldout_loss - table.entropy_rate
    return derived_columns(table)


def run(grid: ControlledGrid, jobs: int = 1, device: str = "cpu", snapshot: Path | None = None) -> dict:
    """Train and measure a grid, and write its snapshot (measurements and provenance, no weights)."""
    started = time.perf_counter()
    table = measure(grid, jobs, device)
    records = {s.label: training_record(spec, width, data) for s, (spec, width, data)
               in zip(grid.students, runs_of(grid), strict=True)}  # fmt: skip
    provenance = {
        "command": " ".join(["python -m satlib", *sys.argv[1:]]) if sys.argv else "satlib.controlled.run",
        "commit": source_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}; "
        f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        "jobs": jobs, "wall_seconds": round(time.perf_counter() - started), "grid": asdict(grid),
        "training": {label: training_provenance(r) for label, r in records.items()},
    }  # fmt: skip
    derived = ("last_anisotropy", "singular_entropy", "effective_rank", "tokens_per_parameter")
    columns = [c for c in table.columns if c not in derived]
    result = {"provenance": provenance, "rows": table[columns].to_dict(orient="records")}
    write_json(snapshot or SNAPSHOTS / f"controlled-{grid.name}.json", result)
    return result


def load_snapshot(name: str, folder: Path = SNAPSHOTS) -> tuple[pd.DataFrame, dict]:
    """A grid's frozen snapshot as a table (with :func:`satlib.saturation.derived_columns`) and its provenance."""
    path = folder / f"controlled-{name}.json"
    if not path.is_file():
        raise MissingArtefactError(f"no snapshot of the {name!r} grid at {path}: make it with `make controlled "
                                   f"GRID={name}`")  # fmt: skip
    snapshot = read_json(path, f"remake it with `make controlled GRID={name}`")
    return derived_columns(pd.DataFrame(snapshot["rows"])), snapshot["provenance"]


def available_snapshots(folder: Path = SNAPSHOTS) -> list[str]:
    """Names of the grids whose snapshot is committed, largest first (``gpu``, then ``factors``)."""
    return [name for name in ("gpu", "factors") if (folder / f"controlled-{name}.json").is_file()]
