"""``python -m satlib``: a user's mistake at the command line is one line on stderr and exit status 2, before any work
starts; the traceback only with ``--debug`` (issue 19, item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def satlib_command(*arguments: str, cache: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, SATLIB_CACHE_DIR=str(cache), SATLIB_DEBUG="0")
    return subprocess.run([sys.executable, "-m", "satlib", *arguments], capture_output=True, text=True, cwd=ROOT,
                          env=environment)  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("prepare", "--jobs", "0"), "argument --jobs: must be an integer >= 1, got '0'"),
        (("prepare", "--jobs", "two"), "argument --jobs: must be an integer >= 1, got 'two'"),
        (("prepare", "--preset", "bogus"), "error: unknown preset 'bogus': use one of ['pythia', 'tiny']"),
        (("controlled", "--grid", "huge"), "error: unknown grid 'huge': use one of ['factors', 'gpu', 'live']"),
        (("controlled", "--tokens", "-5"), "argument --tokens: must be an integer >= 1, got '-5'"),
        (("execute", "--jobs", "0"), "--jobs"),
    ],
)
def test_a_mistake_is_one_line_and_exit_status_2_and_nothing_is_written(tmp_path, arguments, message):
    result = satlib_command(*arguments, cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache").exists()  # stopped before any work


def test_debug_shows_the_traceback(tmp_path):
    result = satlib_command("--debug", "prepare", "--preset", "bogus", cache=tmp_path / "cache")
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr
    assert "ConfigurationError: unknown preset 'bogus'" in result.stderr


def test_head_experiments_run_on_the_backbones_asked_for_only(monkeypatch):
    """``prepare`` queues the head experiments in the training's pool, SmolLM2's at once and each suite backbone's
    when it is trained: a job runs exactly the experiments on its backbones."""
    from satlib import cli, presets

    ran = []
    monkeypatch.setattr(cli, "prepare_smollm2", lambda: ran.append("fetch"))
    monkeypatch.setattr(cli, "run_rank_experiment", lambda e, preset: ran.append(("ranks", e.model)))
    monkeypatch.setattr(cli, "run_mixture_experiment", lambda e, preset: ran.append(("mixture", e.backbone.model)))
    threads = torch.get_num_threads()
    try:
        message = cli.head_experiments_on("tiny", [presets.SMOLLM2])
        suite_backbone = presets.TINY_HEADS.model
        assert ran == ["fetch", ("ranks", presets.SMOLLM2), ("mixture", presets.SMOLLM2)]
        assert message.startswith(f"heads: ranks and mixtures on {presets.SMOLLM2} ready")
        ran.clear()
        cli.head_experiments_on("tiny", [suite_backbone])
        assert ran == [("ranks", suite_backbone), ("mixture", suite_backbone)]  # no SmolLM2 fetched for it
        ran.clear()
        cli.head_experiments_on("tiny", [suite_backbone], ("mixtures",))
        assert ran == [("mixture", suite_backbone)]
    finally:
        torch.set_num_threads(threads)


def test_the_commands_the_book_prints_for_its_snapshots_exist():
    """Chapter 01 prints ``long_run.COMMAND`` as the way to remake its snapshot (issue 27, item 8): the command line
    parses it, and ``make long-run`` runs exactly it."""
    from satlib import cli, long_run

    prefix = "python -m satlib "
    assert long_run.COMMAND.startswith(prefix)
    arguments = cli.parser().parse_args(long_run.COMMAND.removeprefix(prefix).split())
    assert arguments.run is cli.long_run
    assert f"$(BIN)/{long_run.COMMAND} $(LONG_RUN_ARGS)" in (ROOT / "Makefile").read_text()
