"""Checkpoint sweeps on any ``concurrent.futures`` executor, with a resumable result store (paper scale).

A figure of the paper needs one measurement of many checkpoints (Figure 1a: 5 models x 16 steps on The Pile;
Figure 5: every checkpoint of every model). :func:`sweep` sends one task per checkpoint to a standard
``concurrent.futures.Executor`` and writes each result, as it arrives, to a :class:`ResultStore` keyed by
(preset, model, step, measurement). The executor is the reader's choice, and scheduling is its job:

* nothing (default): the tasks run one after another in this process;
* ``concurrent.futures.ProcessPoolExecutor``: the cores of one machine;
* ``dask.distributed.Client(...).get_executor()``: a cluster (a dead worker's tasks are rescheduled);
* ``submitit.AutoExecutor(folder)``: Slurm jobs.

A sweep that dies resumes where it stopped (stored results are skipped), and a store filled elsewhere (copied
from a cluster) is read by the book like one filled here.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from satlib.config import cache_dir, progress, write_atomically


@dataclass(frozen=True)
class Task:
    """One checkpoint to measure: which preset, model and step, and which measurements (names of
    :data:`satlib.evaluate.MEASUREMENTS`)."""

    preset: str
    model: str
    step: int
    measurements: tuple[str, ...]


class ResultStore:
    """Measurements on disk, one JSON file per (preset, model, step, measurement), written atomically.

    Each record also holds its key (:func:`task_key`: a hash of the token ids, the dtype, and the checkpoint's
    location), so results measured on other data, in another precision or on another checkpoint (a retrained
    suite) are never mixed in: they count as missing.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "results"

    def path(self, preset: str, model: str, step: int, measurement: str) -> Path:
        return self.root / preset / model / f"step{step}" / f"{measurement}.json"

    def get(self, preset: str, model: str, step: int, measurement: str, key: dict) -> object | None:
        """The stored value, or None when absent or measured on other data."""
        path = self.path(preset, model, step, measurement)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record["value"] if record.get("key") == key else None

    def put(self, preset: str, model: str, step: int, measurement: str, key: dict, value: object) -> None:
        write_atomically(self.path(preset, model, step, measurement), json.dumps({"key": key, "value": value}))

    def missing(self, tasks: list[Task], keys: dict[Task, dict]) -> list[Task]:
        """The tasks with at least one measurement not stored under that task's key."""
        stored = lambda task, name: self.get(task.preset, task.model, task.step, name, keys[task]) is not None  # noqa: E731
        return [task for task in tasks if not all(stored(task, name) for name in task.measurements)]


def windows_key(windows: torch.Tensor) -> dict:
    """What a result depends on besides the checkpoint: the token ids it was measured on (and how many of them
    enter the anisotropy)."""
    from satlib.evaluate import ANISOTROPY_WINDOWS

    return {"windows": hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16], "anisotropy": ANISOTROPY_WINDOWS}


def task_key(task: Task, windows: dict, dtype: str) -> dict:
    """Everything a task's results depend on: the data, the precision, and which checkpoint (a retrained suite
    has another cache folder; a mirror is not the hub)."""
    from satlib.models import model_path

    return windows | {"dtype": dtype, "checkpoint": str(model_path(task.model, task.step, task.preset))}


def run_task(task: Task, windows: torch.Tensor, device: str = "cpu", dtype: str = "float32") -> dict[str, object]:
    """Measure one checkpoint (runs in a worker): load it once, compute every measurement of the task."""
    from satlib.evaluate import MEASUREMENTS
    from satlib.models import load

    if device == "cpu" and _in_worker():
        torch.set_num_threads(1)  # worker processes share the cores: one thread each
    model = load(task.model, task.step, task.preset, device=device, dtype=dtype)
    return {name: MEASUREMENTS[name](model, windows) for name in task.measurements}


def _in_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


def sweep(
    tasks: list[Task],
    windows: torch.Tensor,
    store: ResultStore | None = None,
    executor: Executor | object | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> pd.DataFrame:
    """Measure every task's checkpoint, skipping what the store holds; return everything as one table.

    Args:
        tasks: checkpoints and measurements (e.g. from :func:`tasks_for`).
        windows: (n, context + 1) token ids every checkpoint is measured on (shipped to the workers).
        store: where results go (default: ``<cache>/results``).
        executor: any ``concurrent.futures.Executor``, or any object whose ``submit`` returns jobs with a
            ``result()`` method (a ``submitit`` executor); None runs the tasks here, one after another.
        device, dtype: where and in which precision the workers run the models.

    Returns:
        One row per task: ``preset``, ``model``, ``step`` and one column per measurement.
    """
    from satlib.evaluate import MEASUREMENTS

    unknown = {m for t in tasks for m in t.measurements} - set(MEASUREMENTS)
    if unknown:
        raise ValueError(f"unknown measurements {sorted(unknown)}: use {sorted(MEASUREMENTS)}")
    store = store or ResultStore()
    data = windows_key(windows)
    keys = {task: task_key(task, data, dtype) for task in tasks}
    todo = store.missing(tasks, keys)
    bar = progress(total=len(todo), desc="sweep", unit="checkpoint", leave=False)

    def keep(task: Task, values: dict[str, object]) -> None:
        for name, value in values.items():  # stored as each result arrives: a dead sweep loses only running tasks
            store.put(task.preset, task.model, task.step, name, keys[task], value)
        bar.update(1)

    if executor is None:
        for task in todo:
            keep(task, run_task(task, windows, device, dtype))
    else:
        futures = {executor.submit(run_task, task, windows, device, dtype): task for task in todo}
        # concurrent.futures futures are kept as each completes; other jobs (submitit's) are awaited in order.
        arrived = as_completed(futures) if all(isinstance(f, Future) for f in futures) else list(futures)
        for future in arrived:
            keep(futures[future], future.result())
    bar.close()
    rows = []
    for task in tasks:
        row = {"preset": task.preset, "model": task.model, "step": task.step}
        rows.append(row | {m: store.get(task.preset, task.model, task.step, m, keys[task]) for m in task.measurements})
    return pd.DataFrame(rows)


def tasks_for(
    preset: str, measurements: tuple[str, ...], checkpoints: list[tuple[str, int]] | None = None
) -> list[Task]:
    """One task per checkpoint (default: every checkpoint the preset's figures use)."""
    from satlib.evaluate import default_checkpoints

    checkpoints = default_checkpoints(preset) if checkpoints is None else checkpoints
    return [Task(preset, model, step, tuple(measurements)) for model, step in checkpoints]
