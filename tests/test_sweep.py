"""satlib.sweep: the result store, resuming, and the same sweep on a process pool and on a dask cluster that loses
a worker mid-sweep."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from satlib import evaluate, models, sweep
from satlib.suite import suite_spec
from satlib.tokenization import token_ids

MODEL = "tiny-d16"


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    spec = suite_spec("tiny")
    return evaluate.evaluation_windows(token_ids("validation", spec.vocab_size), spec.context, 4 * spec.context)


def tasks(measurements: tuple[str, ...] = ("heldout_loss",)) -> list[sweep.Task]:
    return sweep.tasks_for("tiny", measurements, [(MODEL, step) for step in models.checkpoint_steps(MODEL)])


def test_store_is_keyed_and_atomic(tmp_path):
    store = sweep.ResultStore(tmp_path)
    store.put("tiny", MODEL, 8, "heldout_loss", {"windows": "a"}, 5.0)
    assert store.get("tiny", MODEL, 8, "heldout_loss", {"windows": "a"}) == 5.0
    assert store.get("tiny", MODEL, 8, "heldout_loss", {"windows": "b"}) is None  # other data: missing
    assert store.path("tiny", MODEL, 8, "heldout_loss") == tmp_path / "tiny" / MODEL / "step8" / "heldout_loss.json"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left
    task = sweep.Task("tiny", MODEL, 8, ("heldout_loss", "head_singular_values"))
    assert store.missing([task], {task: {"windows": "a"}}) == [task]  # one of its measurements is missing


def test_key_names_the_checkpoint_and_dtype(windows):
    task = tasks()[3]
    key = sweep.task_key(task, sweep.windows_key(windows), "float32")
    assert key["dtype"] == "float32" and f"step{task.step}" in key["checkpoint"]
    assert key["checkpoint"] != sweep.task_key(tasks()[4], sweep.windows_key(windows), "float32")["checkpoint"]
    assert key != sweep.task_key(task, sweep.windows_key(windows), "bfloat16")


def test_serial_sweep_resumes_and_matches_a_direct_measurement(tmp_path, windows, monkeypatch):
    store = sweep.ResultStore(tmp_path)
    first = tasks()[:5]
    sweep.sweep(first, windows, store)
    ran = []
    original = sweep.run_task
    monkeypatch.setattr(sweep, "run_task", lambda task, *args: ran.append(task.step) or original(task, *args))
    table = sweep.sweep(tasks(), windows, store)
    assert ran == [t.step for t in tasks()[5:]]  # the stored five are not measured again
    direct = evaluate.heldout_loss(models.load(MODEL, table.step.iloc[-1]), windows)
    assert table.heldout_loss.iloc[-1] == pytest.approx(direct, rel=1e-6)
    with pytest.raises(ValueError, match="unknown measurements"):
        sweep.sweep([sweep.Task("tiny", MODEL, 0, ("perplexity",))], windows, store)


def test_process_pool_equals_serial(tmp_path, windows):
    measurements = ("heldout_loss", "anisotropy_profile")
    serial = sweep.sweep(tasks(measurements)[:6], windows, sweep.ResultStore(tmp_path / "serial"))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = sweep.sweep(tasks(measurements)[:6], windows, sweep.ResultStore(tmp_path / "pool"), pool)
    assert pooled.equals(serial)


def test_dask_cluster_survives_a_killed_worker(tmp_path, windows):
    distributed = pytest.importorskip("distributed")
    serial = sweep.sweep(tasks(), windows, sweep.ResultStore(tmp_path / "serial"))
    store = sweep.ResultStore(tmp_path / "dask")
    killed = {}

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            pids = client.run(os.getpid)

            def kill_one_worker_after_the_first_result() -> None:
                deadline = time.monotonic() + 120
                while not list(store.root.rglob("*.json")) and time.monotonic() < deadline:
                    time.sleep(0.05)
                killed["stored_before"] = len(list(store.root.rglob("*.json")))
                os.kill(next(iter(pids.values())), signal.SIGKILL)

            killer = threading.Thread(target=kill_one_worker_after_the_first_result)
            killer.start()
            table = sweep.sweep(tasks(), windows, store, client.get_executor())
            killer.join()
    assert 1 <= killed["stored_before"] < len(tasks())  # the kill happened mid-sweep
    assert len(list(store.root.rglob("*.json"))) == len(tasks())  # the store ends complete
    assert table.equals(serial)


def test_submitit_executor_equals_serial(tmp_path, windows):
    """submitit (Slurm's executor) with its local backend: jobs run in their own processes, awaited in order."""
    submitit = pytest.importorskip("submitit")
    serial = sweep.sweep(tasks()[:3], windows, sweep.ResultStore(tmp_path / "serial"))
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="local")
    executor.update_parameters(timeout_min=10)
    submitted = sweep.sweep(tasks()[:3], windows, sweep.ResultStore(tmp_path / "submitit"), executor)
    assert submitted.equals(serial)
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == 3  # three jobs ran outside this process
