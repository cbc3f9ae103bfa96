"""satlib.training and satlib.specs: schedule, data order, chunked loss, resume after a real kill, concurrent
training, and the repair of a damaged checkpoint."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from satlib import config, long_run, models, presets, specs, training
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError

TEST_SPEC = specs.SuiteSpec(name="test", widths=(8, 16), vocab_size=64, context=16, batch_size=4, steps=40,
                            eval_tokens=256)  # fmt: skip
TEST_IDS = np.random.default_rng(0).integers(0, 64, 20_000).astype(np.uint16)


class ArrayBatches:
    """Training windows of a fixed token array (the corpus's batch order, without the corpus)."""

    identity = "random-64"

    def batch(self, spec, step):
        starts = torch.from_numpy(training.batch_starts(spec, len(TEST_IDS), step))
        return torch.from_numpy(TEST_IDS.astype(np.int64))[starts[:, None] + torch.arange(spec.context + 1)]


DATA = ArrayBatches()


def final_weights(folder):
    return load_file(str(folder / f"step{TEST_SPEC.steps}" / "model.safetensors"))


def test_checkpoint_schedule_has_pythias_shape():
    spec = presets.TINY_SUITE
    steps = spec.checkpoint_steps()
    assert steps[0] == 0 and steps[-1] == spec.steps and steps == sorted(set(steps))
    assert {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024} <= set(steps)
    assert {spec.steps // 10 * k for k in range(1, 11)} <= set(steps)


def test_parameter_count_matches_the_closed_form():
    """GPT-NeoX with untied head: 2 V d (embedding, head) + per layer 12 d^2 + 13 d (attention, MLP, two norms,
    biases) + 2 d (final norm)."""
    spec = presets.TINY_SUITE
    for width in (16, 128):
        per_layer = 12 * width**2 + 13 * width
        assert (
            training.parameter_count(spec, width) == 2 * spec.vocab_size * width + spec.n_layers * per_layer + 2 * width
        )


def test_learning_rate_schedule():
    spec = presets.TINY_SUITE
    warmup = round(0.01 * spec.steps)
    assert spec.learning_rate(0) == pytest.approx(spec.peak_lr / warmup)
    assert spec.learning_rate(warmup) == pytest.approx(spec.peak_lr)
    assert spec.learning_rate(spec.steps) == pytest.approx(0.1 * spec.peak_lr)
    rates = [spec.learning_rate(s) for s in range(warmup, spec.steps + 1)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_data_order_depends_on_step_only_and_reshuffles_each_epoch():
    spec = dataclasses.replace(TEST_SPEC, batch_size=5)  # 1,176 windows: batch 235 straddles two epochs
    windows = (20_000 - 1) // 17
    starts = [training.batch_starts(spec, 20_000, step) for step in range(-(-2 * windows // 5))]
    np.testing.assert_array_equal(starts[7], training.batch_starts(spec, 20_000, 7))  # a pure function of the step
    flat = np.concatenate(starts)
    first, second = flat[:windows], flat[windows : 2 * windows]
    assert len(set(first)) == len(set(second)) == windows  # each epoch visits every window once
    assert not np.array_equal(first, second)  # in a new order
    assert all(start % 17 == 0 for start in flat)


def test_chunked_cross_entropy_matches_plain():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=generator)
    chunked = training.chunked_cross_entropy(hidden, weight, targets, chunk=10)
    grads = torch.autograd.grad(chunked, (hidden, weight))
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    expected = torch.autograd.grad(plain, (hidden, weight))
    assert float(chunked.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_constant_schedule_and_bad_specs():
    constant = dataclasses.replace(TEST_SPEC, schedule="constant", steps=1000)
    assert constant.learning_rate(0) == pytest.approx(constant.peak_lr / 10)  # 10 warm-up steps
    assert constant.learning_rate(10) == constant.learning_rate(999) == constant.peak_lr
    assert constant.key() != dataclasses.replace(constant, schedule="cosine").key()  # separate caches
    with pytest.raises(ConfigurationError, match="unknown schedule 'linear'"):
        dataclasses.replace(TEST_SPEC, schedule="linear")
    with pytest.raises(ConfigurationError, match="no model of width 12 in the suite 'test'"):
        training.model_config(TEST_SPEC, 12)
    with pytest.raises(ConfigurationError, match="steps must be a positive number"):
        dataclasses.replace(TEST_SPEC, steps=0)


def train_script(cache: str, width: int) -> str:
    return textwrap.dedent(f"""
        import os, sys, numpy as np, torch
        os.environ["SATLIB_CACHE_DIR"] = {cache!r}
        torch.set_num_threads(1)
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_training import TEST_SPEC, DATA
        from satlib import training
        print(training.train_model(TEST_SPEC, {width}, DATA), os.getpid(), flush=True)
    """)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_identical(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path / "straight"))
    straight = final_weights(training.train_model(TEST_SPEC, 8, DATA))

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", train_script(str(killed), 8)])
    folder = killed / "suite" / f"test-{TEST_SPEC.key()}-{DATA.identity}" / "d8"
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("resume-*/state.json")):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (folder / "complete.json").exists(), "the run finished before it could be killed"
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(killed))
    resumed = final_weights(training.train_model(TEST_SPEC, 8, DATA))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert not list(folder.glob("resume-*"))


@pytest.mark.slow
def test_concurrent_requests_train_once(tmp_path):
    script = train_script(str(tmp_path), 16)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].split() for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert outputs[0][0] == outputs[1][0]
    folder = tmp_path / "suite" / f"test-{TEST_SPEC.key()}-{DATA.identity}" / "d16"
    trainers = (folder / "trainers.log").read_text().split()
    assert len(trainers) == 1, f"trained {len(trainers)} times"
    record = json.loads((folder / "complete.json").read_text())
    assert int(trainers[0]) == record["trained_by_pid"]
    assert trainers[0] in {o[1] for o in outputs}
    provenance = long_run.training_provenance(record)  # the training's own provenance, for snapshots (issue 27)
    assert provenance["commit"] == config.source_commit() and provenance["finished"].startswith("20")
    assert provenance["seconds_last_session"] == record["seconds_this_run"]


@pytest.mark.slow
def test_damaged_or_deleted_checkpoint_is_named_and_repaired(tmp_path, monkeypatch):
    """A truncated checkpoint is refused with advice that works: ensure_trained (what `make suite` runs) finds it,
    retrains that model and gives back the same bytes; a deleted checkpoint folder is rebuilt the same way."""
    torch.set_num_threads(1)
    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path))
    runs = [(TEST_SPEC, 8, DATA), (TEST_SPEC, 16, DATA)]
    assert training.ensure_trained(runs) == ["missing", "missing"]
    folder = models.model_dir(TEST_SPEC, 8, DATA.identity)
    step = TEST_SPEC.checkpoint_steps()[5]
    weights = folder / f"step{step}" / "model.safetensors"
    original = weights.read_bytes()
    untouched = (models.model_dir(TEST_SPEC, 16, DATA.identity) / "complete.json").stat().st_mtime_ns
    weights.write_bytes(original[: len(original) // 2])
    point = training.suite_checkpoint(TEST_SPEC, 8, DATA, step)
    with pytest.raises(DamagedArtefactError, match=r"fails its checksum\): run `make suite`") as info:
        models.load_checkpoint(point)
    assert "\n" not in str(info.value)
    assert training.ensure_trained(runs) == [f"damaged: step{step}/model.safetensors", "complete"]
    assert weights.read_bytes() == original
    assert (models.model_dir(TEST_SPEC, 16, DATA.identity) / "complete.json").stat().st_mtime_ns == untouched
    models.load_checkpoint(point)  # loads again

    shutil.rmtree(folder / f"step{step}")  # the other advice a user may follow: delete the folder
    with pytest.raises(MissingArtefactError, match="run `make suite`"):
        models.load_checkpoint(point)
    assert training.ensure_trained(runs)[0] == f"damaged: step{step}/checksums.json"
    assert weights.read_bytes() == original


def test_models_are_queued_jobs_at_a_time_so_that_work_queued_when_one_is_done_goes_first(tmp_path, monkeypatch):
    """``prepare`` queues a backbone's heads when it is trained: they must run before the models still waiting."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    monkeypatch.setenv("SATLIB_CACHE_DIR", str(tmp_path))
    order = []
    monkeypatch.setattr(training, "_train_in_worker", lambda spec, width, data, device: order.append(("model", width)))
    spec = specs.SuiteSpec("queue", (8, 16, 32))
    runs = [(spec, width, SimpleNamespace(identity="made-up data")) for width in spec.widths]
    with ThreadPoolExecutor(1) as pool:  # one worker: jobs run in the order they were queued
        queue_after = lambda spec, width: pool.submit(order.append, ("after", width))  # noqa: E731
        before = training.ensure_trained(runs, jobs=1, pool=pool, on_trained=queue_after)
    assert before == ["missing"] * 3
    assert order == [("model", 8), ("after", 8), ("model", 16), ("after", 16), ("model", 32), ("after", 32)]
