"""Measuring many checkpoints, once each, on any ``concurrent.futures`` executor (measurement layer; paper scale).

A figure of the paper needs one measurement of many checkpoints (Figure 1a: 5 models x 16 steps on The Pile;
Figure 5: every checkpoint of every model). :func:`sweep` sends one task per checkpoint to a standard
``concurrent.futures.Executor`` and writes each result, as it arrives, to a :class:`ResultStore`. Every checkpoint
of every experiment of the book (the suite, the long runs, the shapes, the controlled students, Pythia) goes
through it. The executor is the reader's choice, and scheduling is its job:

* nothing (default): the tasks run one after another in this process;
* ``concurrent.futures.ProcessPoolExecutor``: the cores of one machine;
* ``dask.distributed.Client(...).get_executor()``: a cluster (a dead worker's tasks are rescheduled);
* ``submitit.AutoExecutor(folder)``: Slurm jobs.

A result is stored under (group, model, step, measurement) with a key of what it depends on: the checkpoint's
content (not its path: a cache copied to another machine, or from a cluster, is reused; a retrained checkpoint is
not), the precision, and the hash of the tokens it was measured on. A sweep that dies resumes where it stopped; a
damaged record counts as missing and is measured again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from satlib.config import cache_dir
from satlib.errors import ConfigurationError
from satlib.evaluate import ANISOTROPY_WINDOWS, MEASUREMENTS, sample_windows
from satlib.models import Checkpoint, checkpoint, load_checkpoint, width_of
from satlib.presets import Preset, get_preset
from satlib.specs import SuiteSpec
from satlib.storage import progress, write_atomically
from satlib.training import BatchSource, parameter_count, suite_checkpoint


@dataclass(frozen=True)
class Task:
    """One checkpoint to measure, and which measurements (names of :data:`satlib.evaluate.MEASUREMENTS`)."""

    checkpoint: Checkpoint
    measurements: tuple[str, ...]


class ResultStore:
    """Measurements on disk, one JSON file per (group, model, step, measurement), written atomically.

    Each record holds its key (:func:`result_key`), so a result measured on other data, in another precision or on
    another checkpoint is never mixed in: it counts as missing. Reading takes no lock and needs no write access.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "results"

    def path(self, point: Checkpoint, measurement: str) -> Path:
        return self.root / point.group / point.model / f"step{point.step}" / f"{measurement}.json"

    def get(self, point: Checkpoint, measurement: str, key: dict) -> object | None:
        """The stored value, or None when absent, measured on other data, or damaged (then it is remeasured)."""
        path = self.path(point, measurement)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            print(f"sweep: {path} is damaged: measuring it again", file=sys.stderr, flush=True)
            return None
        return record.get("value") if record.get("key") == key else None

    def put(self, point: Checkpoint, measurement: str, key: dict, value: object) -> None:
        write_atomically(self.path(point, measurement), json.dumps({"key": key, "value": value}))


def data_keys(data: dict[str, torch.Tensor]) -> dict[str, str]:
    """A short hash of each named set of token windows."""
    return {name: hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16] for name, windows in data.items()}


def result_key(point: Checkpoint, measurement: str, keys: dict[str, str], dtype: str) -> dict:
    """Everything one result depends on: the checkpoint's content, the precision, the tokens it was measured on."""
    source = MEASUREMENTS[measurement].data
    key = {"checkpoint": point.identity(), "dtype": dtype, "data": keys[source] if source else None}
    return key | ({"anisotropy_windows": ANISOTROPY_WINDOWS} if measurement == "anisotropy_profile" else {})


def run_task(task: Task, data: dict[str, torch.Tensor], device: str = "cpu", dtype: str = "float32") -> dict:
    """Measure one checkpoint (runs in a worker): load it once, compute every measurement of the task."""
    if device == "cpu" and multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # worker processes share the cores: one thread each
    model = load_checkpoint(task.checkpoint, device=device, dtype=dtype)
    return {name: MEASUREMENTS[name].compute(model, data.get(MEASUREMENTS[name].data)) for name in task.measurements}


def sweep(
    tasks: list[Task],
    data: dict[str, torch.Tensor],
    store: ResultStore | None = None,
    executor: Executor | object | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> pd.DataFrame:
    """Measure every task's checkpoint, skipping what the store holds; return everything as one table.

    Args:
        tasks: checkpoints and measurements.
        data: the (n, context + 1) token windows the measurements read, by name (``evaluation``, ``training``).
        store: where results go (default: ``<cache>/results``).
        executor: any ``concurrent.futures.Executor``, or any object whose ``submit`` returns jobs with a
            ``result()`` method (a ``submitit`` executor); None runs the tasks here, one after another.
        device, dtype: where and in which precision the workers run the models.

    Returns:
        One row per task: ``group``, ``model``, ``step`` and one column per measurement.
    """
    unknown = {m for t in tasks for m in t.measurements} - set(MEASUREMENTS)
    if unknown:
        raise ConfigurationError(f"unknown measurements {sorted(unknown)}: use {sorted(MEASUREMENTS)}")
    needed = {MEASUREMENTS[m].data for t in tasks for m in t.measurements} - {None} - set(data)
    if needed:
        raise ConfigurationError(f"the measurements need token windows called {sorted(needed)}: pass them in data")
    places: dict[tuple[str, str, int], str] = {}
    for point in (t.checkpoint for t in tasks):  # one record per (group, model, step): two models may not share it
        if places.setdefault((point.group, point.model, point.step), point.location) != point.location:
            raise ConfigurationError(f"two checkpoints would share the results of {point.group}/{point.model} at "
                                     f"step {point.step}: give each suite a group of its own")  # fmt: skip
    store = store or ResultStore()
    hashes = data_keys(data)
    keys = {(t, m): result_key(t.checkpoint, m, hashes, dtype) for t in tasks for m in t.measurements}
    todo = list(dict.fromkeys(t for t in tasks if any(store.get(t.checkpoint, m, keys[t, m]) is None
                                                      for m in t.measurements)))  # fmt: skip
    bar = progress(total=len(todo), desc="sweep", unit="checkpoint", leave=False)

    def keep(task: Task, values: dict[str, object]) -> None:
        for name, value in values.items():  # stored as each result arrives: a dead sweep loses only running tasks
            store.put(task.checkpoint, name, keys[task, name], value)
        bar.update(1)

    if executor is None:
        for task in todo:
            keep(task, run_task(task, data, device, dtype))
    else:
        futures = {executor.submit(run_task, task, data, device, dtype): task for task in todo}
        # concurrent.futures futures are kept as each completes; other jobs (submitit's) are awaited in order.
        arrived = as_completed(futures) if all(isinstance(f, Future) for f in futures) else list(futures)
        for future in arrived:
            keep(futures[future], future.result())
    bar.close()
    rows = []
    for task in tasks:
        point = task.checkpoint
        row = {"group": point.group, "model": point.model, "step": point.step}
        rows.append(row | {m: store.get(point, m, keys[task, m]) for m in task.measurements})
    return pd.DataFrame(rows)


def measure(
    preset: str | Preset = "tiny",
    names: tuple[str, ...] = ("heldout_loss",),
    checkpoints: list[tuple[str, int]] | None = None,
    windows: torch.Tensor | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Measurements of a preset's checkpoints (default: those its figures use), each computed once and stored.

    Args:
        preset: a :class:`satlib.presets.Preset` or its name.
        names: keys of :data:`satlib.evaluate.MEASUREMENTS` that read the evaluation sample or nothing.
        checkpoints: (model, step) pairs; default ``preset.checkpoints()``.
        windows: (n, context + 1) token ids to measure on; default the preset's evaluation sample.
        device, dtype: where and in which precision models run. executor: see :func:`sweep`.

    Returns:
        Columns ``model``, ``width``, ``step``, ``tokens`` and one per measurement (floats, or lists for
        profiles and spectra).
    """
    preset = get_preset(preset)
    checkpoints = preset.checkpoints() if checkpoints is None else checkpoints
    windows = sample_windows(preset.evaluation, preset) if windows is None else windows
    tasks = [Task(checkpoint(model, step, preset), tuple(names)) for model, step in checkpoints]
    table = sweep(tasks, {"evaluation": windows}, executor=executor, device=device, dtype=dtype)
    table.insert(2, "width", [width_of(model, preset) for model in table.model])
    table.insert(4, "tokens", table.step * preset.tokens_per_step())
    return table.drop(columns="group")


def heldout_losses(preset: str | Preset = "tiny", **options: object) -> pd.DataFrame:
    """The live Figure 1a of a preset: its suite on its evaluation sample (the corpus's validation split for
    ``tiny``, 50,000 Pile tokens for ``pythia``). Columns ``model``, ``width``, ``step``, ``tokens``, ``loss``."""
    return measure(preset, ("heldout_loss",), **options).rename(columns={"heldout_loss": "loss"})


def measure_trained(
    runs: list[tuple[SuiteSpec, int, BatchSource]],
    data: dict[str, torch.Tensor],
    names: tuple[str, ...] = ("heldout_loss", "train_loss", "anisotropy_profile", "head_singular_values"),
    evenly_spaced: bool = False,
    executor: Executor | None = None,
    device: str = "cpu",
) -> pd.DataFrame:
    """Every checkpoint of trained models (the long runs, the shapes, the controlled students), measured through
    :func:`sweep` like the suite.

    Args:
        runs: (suite, width, training data) of each model.
        data: the windows the measurements read (``evaluation``, ``training``).
        evenly_spaced: only the evenly spaced checkpoints (not the early powers of two).
        executor, device: see :func:`sweep`.

    Returns:
        One row per model and checkpoint: ``group`` (the suite's name), ``model``, ``width``, ``layers``,
        ``seed``, ``parameters``, ``step``, ``tokens`` and one column per measurement.
    """
    tasks, facts = [], []
    for spec, width, source in runs:
        steps = [0, *spec.evenly_spaced_steps()] if evenly_spaced else spec.checkpoint_steps()
        parameters = parameter_count(spec, width)
        for step in steps:
            tasks.append(Task(suite_checkpoint(spec, width, source, step), tuple(names)))
            facts.append(
                {
                    "width": width,
                    "layers": spec.n_layers,
                    "seed": spec.seed,
                    "schedule": spec.schedule,
                    "parameters": parameters,
                    "tokens": step * spec.tokens_per_step,
                }
            )
    table = sweep(tasks, data, executor=executor, device=device)
    return pd.concat([table, pd.DataFrame(facts)], axis=1)
