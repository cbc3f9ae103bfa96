"""satlib.sweep: the result store, resuming, and the same sweep on a process pool and on a dask cluster that loses
a worker mid-sweep."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from satlib import evaluate, models, presets, sweep, training
from satlib.errors import ConfigurationError
from satlib.tokenization import token_ids

MODEL = "tiny-d16"


@pytest.fixture(scope="module")
def windows() -> dict[str, torch.Tensor]:
    spec = presets.TINY_SUITE
    return {"evaluation": evaluate.evaluation_windows(token_ids("validation", spec.vocab_size), spec.context,
                                                      4 * spec.context)}  # fmt: skip


def tasks(measurements: tuple[str, ...] = ("heldout_loss",)) -> list[sweep.Task]:
    return [sweep.Task(models.checkpoint(MODEL, step), measurements) for step in models.checkpoint_steps(MODEL)]


def test_store_is_keyed_and_atomic(tmp_path):
    store = sweep.ResultStore(tmp_path)
    point = models.checkpoint(MODEL, 8)
    store.put(point, "heldout_loss", {"data": "a"}, 5.0)
    assert store.get(point, "heldout_loss", {"data": "a"}) == 5.0
    assert store.get(point, "heldout_loss", {"data": "b"}) is None  # other data: missing
    assert store.path(point, "heldout_loss") == tmp_path / point.group / MODEL / "step8" / "heldout_loss.json"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_key_names_the_checkpoint_content_dtype_and_data(windows):
    hashes = sweep.data_keys(windows)
    key = sweep.result_key(tasks()[3].checkpoint, "heldout_loss", hashes, "float32")
    assert key["dtype"] == "float32" and key["data"] == hashes["evaluation"]
    assert "/" not in key["checkpoint"]  # the checkpoint's content, not its path: a moved cache is reused
    assert key["checkpoint"] != sweep.result_key(tasks()[4].checkpoint, "heldout_loss", hashes, "float32")["checkpoint"]
    assert key != sweep.result_key(tasks()[3].checkpoint, "heldout_loss", hashes, "bfloat16")
    assert sweep.result_key(tasks()[3].checkpoint, "head_singular_values", hashes, "float32")["data"] is None


def test_serial_sweep_resumes_and_matches_a_direct_measurement(tmp_path, windows, monkeypatch):
    store = sweep.ResultStore(tmp_path)
    first = tasks()[:5]
    sweep.sweep(first, windows, store)
    ran = []
    original = sweep.run_task
    monkeypatch.setattr(
        sweep, "run_task", lambda task, *args: ran.append(task.checkpoint.step) or original(task, *args)
    )
    table = sweep.sweep(tasks(), windows, store)
    assert ran == [t.checkpoint.step for t in tasks()[5:]]  # the stored five are not measured again
    direct = evaluate.heldout_loss(models.load(MODEL, int(table.step.iloc[-1])), windows["evaluation"])
    assert table.heldout_loss.iloc[-1] == pytest.approx(direct, rel=1e-6)
    with pytest.raises(ConfigurationError, match="unknown measurements"):
        sweep.sweep([sweep.Task(tasks()[0].checkpoint, ("perplexity",))], windows, store)
    with pytest.raises(ConfigurationError, match=r"need token windows called \['training'\]"):
        sweep.sweep([sweep.Task(tasks()[0].checkpoint, ("train_loss",))], windows, store)


def test_a_damaged_record_is_measured_again(tmp_path, windows, capsys):
    store = sweep.ResultStore(tmp_path)
    table = sweep.sweep(tasks()[:2], windows, store)
    path = store.path(tasks()[1].checkpoint, "heldout_loss")
    path.write_text(path.read_text()[:10])  # truncated
    again = sweep.sweep(tasks()[:2], windows, store)
    assert again.equals(table) and "is damaged: measuring it again" in capsys.readouterr().err
    assert path.read_text().endswith("}")  # repaired


@pytest.mark.slow
def test_a_moved_cache_is_reused(tmp_path, monkeypatch):
    """Records are keyed by the checkpoints' content, not their paths: the whole cache moved elsewhere (another
    machine, a copy from a cluster) answers without measuring anything."""
    from test_training import DATA, TEST_SPEC

    torch.set_num_threads(1)
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "here"))
    training.ensure_trained([(TEST_SPEC, 8, DATA)])
    data = {"evaluation": DATA.batch(TEST_SPEC, 999), "training": DATA.batch(TEST_SPEC, 0)}
    table = sweep.measure_trained([(TEST_SPEC, 8, DATA)], data)
    shutil.move(tmp_path / "here", tmp_path / "there")
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "there"))
    monkeypatch.setattr(sweep, "run_task", lambda *args: pytest.fail("measured again"))
    assert sweep.measure_trained([(TEST_SPEC, 8, DATA)], data).equals(table)
    assert set(table.columns) >= {"heldout_loss", "train_loss", "anisotropy_profile", "head_singular_values"}


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


def test_two_models_may_not_share_a_record(tmp_path):
    """Two checkpoints with one (group, model, step) would overwrite each other's results: refused before any work."""
    first = models.Checkpoint("suite", "m-d8", 10, str(tmp_path / "a"), local=True)
    second = models.Checkpoint("suite", "m-d8", 10, str(tmp_path / "b"), local=True)
    tasks_ = [sweep.Task(first, ("heldout_loss",)), sweep.Task(second, ("heldout_loss",))]
    with pytest.raises(ConfigurationError, match="would share the results of suite/m-d8 at step 10"):
        sweep.sweep(tasks_, {"evaluation": torch.zeros(2, 5, dtype=torch.long)}, store=sweep.ResultStore(tmp_path))
