"""Can the book's own models saturate? The long-run experiment and its frozen snapshot (paper §3 and §4).

The paper's saturation is a late rise of held-out loss, with last-layer anisotropy jumping towards 1 and the
head's singular spectrum collapsing. Pythia-14M shows it after roughly 7,900 tokens per parameter; the ``tiny``
suite sees at most 18. This module pushes tokens per parameter as far as a 2-core machine allows in about an
hour: very small widths (d = 4 and 8, where the output layer sets the cost), the whole offline corpus repeated
over several epochs, and two schedules (Pythia's cosine, and constant after warm-up).

Because repeated epochs could turn saturation into overfitting, every checkpoint is measured on a fixed sample
of the *training* split beside the validation split: saturation raises both, overfitting only the second.

The run is long, so the book never reruns it: ``python -m satlib.saturation run`` (``make long-run``) trains,
measures every checkpoint, and writes the measurements, not the weights, to a small JSON snapshot inside the
package with its provenance (command, commit, date, machine, wall time). The chapters read that snapshot.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from satlib.metrics import singular_entropy
from satlib.suite import SuiteSpec

SNAPSHOT = Path(__file__).resolve().parent / "data_files" / "snapshots" / "long_run.json"
SCHEDULES = ("cosine", "constant")
#: Tokens of the validation split, and of the start of the training split, that every checkpoint is scored on.
SAMPLE_TOKENS = 32_768


@dataclass(frozen=True)
class LongRunSpec(SuiteSpec):
    """A suite trained far longer than ``tiny``, with a choice of learning-rate schedule.

    Attributes:
        schedule: ``cosine`` (Pythia: warm-up, then cosine decay to ``final_lr_fraction``) or ``constant``
            (warm-up, then the peak rate to the end).
    """

    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: use one of {list(SCHEDULES)}")

    def learning_rate(self, step: int) -> float:
        """The cosine schedule of :class:`SuiteSpec`, or the same warm-up followed by a constant rate."""
        warmup = max(1, round(self.warmup_fraction * self.steps))
        if self.schedule == "constant":
            return self.peak_lr * min(1.0, (step + 1) / warmup)
        return super().learning_rate(step)


def long_runs(steps: int = 7000) -> list[LongRunSpec]:
    """The long runs, in the order they train: each schedule is one suite of widths 4 and 8.

    7,000 steps of 32 x 128 tokens are 28.7M tokens per model, about 4.8 epochs of the training split and
    860 tokens per parameter at d = 4 (33,264 parameters, nearly all in the embedding and the head).
    """
    return [
        LongRunSpec(f"long-{schedule}", (4, 8), batch_size=32, steps=steps, checkpoints_evenly=40, schedule=schedule)
        for schedule in SCHEDULES
    ]


def threads_for_load() -> int:
    """Torch threads to use now: the cores that other processes leave idle (at least one).

    On 2 cores, two threads fall to a fraction of one thread's speed as soon as another process holds a core.
    """
    cores = os.cpu_count() or 1
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def measure_checkpoint(folder: Path, validation: object, training: object) -> dict:
    """Everything the snapshot keeps of one checkpoint (weights are not kept).

    Returns:
        ``heldout_loss`` and ``train_loss`` (nats), ``anisotropy`` (per depth, last = the head's input) and
        ``singular_values`` of the head (d values).
    """
    from transformers import GPTNeoXForCausalLM

    from satlib.evaluate import ANISOTROPY_WINDOWS, anisotropy_profile, head_singular_values, heldout_loss

    model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
    return {
        "heldout_loss": heldout_loss(model, validation),
        "train_loss": heldout_loss(model, training),
        "anisotropy": anisotropy_profile(model, validation[:ANISOTROPY_WINDOWS]).tolist(),
        "singular_values": head_singular_values(model).tolist(),
    }


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent)  # fmt: skip
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(
    specs: list[LongRunSpec], snapshot: Path = SNAPSHOT, threads: int | None = None, widths: tuple[int, ...] = ()
) -> dict:
    """Train every long run (resuming any that was interrupted), measure each checkpoint, write the snapshot.

    Args:
        specs: the runs (:func:`long_runs`).
        snapshot: where the JSON snapshot is written (atomically).
        threads: torch threads; default :func:`threads_for_load`.
        widths: train and measure only these widths of each run (default all); the others keep their cache key.

    Returns:
        The snapshot: ``provenance`` and ``rows`` (one per run, width and checkpoint).
    """
    import torch

    from satlib.config import progress, write_atomically
    from satlib.evaluate import evaluation_windows
    from satlib.suite import model_dir, train_model
    from satlib.tokenization import token_ids

    started = time.perf_counter()
    threads = threads_for_load() if threads is None else threads
    torch.set_num_threads(threads)
    rows, training_records = [], {}
    for spec in specs:
        train_ids = token_ids("train", spec.vocab_size)
        validation = evaluation_windows(token_ids("validation", spec.vocab_size), spec.context, SAMPLE_TOKENS)
        training = evaluation_windows(train_ids, spec.context, SAMPLE_TOKENS)
        for width in [w for w in spec.widths if not widths or w in widths]:
            folder = train_model(spec, width, train_ids)
            record = json.loads((folder / "complete.json").read_text())
            training_records[f"{spec.schedule}-d{width}"] = {
                "seconds_last_session": record["seconds_this_run"],
                "tokens_per_second_last_session": record["tokens_per_second"],
            }
            parameters = spec.parameter_count(width)
            for step in progress(spec.checkpoint_steps(), desc=f"measure {spec.schedule} d={width}", leave=False):
                values = measure_checkpoint(model_dir(spec, width) / f"step{step}", validation, training)
                rows.append({"schedule": spec.schedule, "width": width, "parameters": parameters, "step": step,
                             "tokens": step * spec.tokens_per_step, **values})  # fmt: skip
    provenance = {
        "command": " ".join(["python -m satlib.saturation", *sys.argv[1:]]),
        "commit": _git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}, "
        f"{threads} thread(s)",
        "wall_seconds": round(time.perf_counter() - started),
        "training": training_records,  # from each model's completion record (a resumed run records its last session)
        "specs": [asdict(spec) for spec in specs],  # the cache keys; widths_trained says which models ran
        "widths_trained": sorted({row["width"] for row in rows}),
        "sample_tokens": SAMPLE_TOKENS,
        "train_split_tokens": (len(token_ids("train", specs[0].vocab_size))),
    }
    result = {"provenance": provenance, "rows": rows}
    write_atomically(snapshot, json.dumps(result, indent=1))
    return result


def load_snapshot(path: Path = SNAPSHOT) -> tuple[pd.DataFrame, dict]:
    """The frozen snapshot as a table (one row per run, width and checkpoint) and its provenance.

    Adds ``run`` (e.g. ``cosine d=4``), ``tokens_per_parameter``, ``last_anisotropy`` (the head's input) and
    ``singular_entropy`` (sigma normalised, as in the spectrum chapter).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no long-run snapshot at {path}: make it with `make long-run` (about an hour)")
    snapshot = json.loads(path.read_text())
    table = pd.DataFrame(snapshot["rows"])
    return _derived_columns(table.assign(run=table.schedule + " d=" + table.width.astype(str))), snapshot["provenance"]


def _derived_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``tokens_per_parameter``, ``last_anisotropy`` (the head's input) and ``singular_entropy`` of measured rows."""
    return table.assign(
        tokens_per_parameter=table.tokens / table.parameters,
        last_anisotropy=table.anisotropy.map(lambda profile: profile[-1]),
        singular_entropy=table.singular_values.map(singular_entropy),
    )


#: Wider versus deeper at one parameter budget (paper §6's open question): (width, layers) pairs trained on the
#: ``tiny`` suite's recipe, data and steps. (128, 2) is the suite's own ``tiny-d128``; (96, 6) has 0.9% more
#: parameters. A third shape (144, 1) would have 1.0% fewer; it is left out to keep the book's build short.
SHAPES: tuple[tuple[int, int], ...] = ((128, 2), (96, 6))


def shape_spec(width: int, layers: int, base: SuiteSpec) -> SuiteSpec:
    """The suite that trains a (width, layers) model: ``base`` itself when it holds that model (its cache is
    reused), else ``base`` with that one width and depth."""
    if layers == base.n_layers and width in base.widths:
        return base
    return replace(base, preset=f"{base.preset}-shapes", widths=(width,), n_layers=layers)


def shape_comparison(shapes: tuple[tuple[int, int], ...] = SHAPES, base_preset: str = "tiny") -> pd.DataFrame:
    """Train (cached) and measure models of one budget but different shapes at every evenly spaced checkpoint.

    Each checkpoint is measured as in the long run (:func:`measure_checkpoint`). The table is cached as JSON
    under ``<cache>/shapes/``, keyed by the suites that trained the models and the sample size.

    Returns:
        One row per shape and checkpoint: ``run`` (e.g. ``d=96, 6 layers``), ``width``, ``layers``,
        ``parameters``, ``step``, ``tokens``, the measurements and :func:`load_snapshot`'s derived columns.
    """
    import hashlib

    from satlib.config import cache_dir, progress, write_atomically
    from satlib.evaluate import evaluation_windows
    from satlib.suite import suite_spec, train_model
    from satlib.tokenization import token_ids

    base = suite_spec(base_preset)
    specs = [(shape_spec(width, layers, base), width, layers) for width, layers in shapes]
    key = json.dumps([[[asdict(spec), width] for spec, width, _ in specs], SAMPLE_TOKENS], sort_keys=True)
    path = cache_dir() / "shapes" / f"{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"
    if not path.is_file():
        train_ids = token_ids("train", base.vocab_size)
        validation = evaluation_windows(token_ids("validation", base.vocab_size), base.context, SAMPLE_TOKENS)
        training = evaluation_windows(train_ids, base.context, SAMPLE_TOKENS)
        rows = []
        for spec, width, layers in specs:
            folder = train_model(spec, width, train_ids)
            parameters = spec.parameter_count(width)
            spacing = max(1, spec.steps // spec.checkpoints_evenly)
            steps = [step for step in spec.checkpoint_steps() if step % spacing == 0]
            for step in progress(steps, desc=f"measure d={width}, {layers} layers", leave=False):
                rows.append({"run": f"d={width}, {layers} layers", "width": width, "layers": layers,
                             "parameters": parameters, "step": step, "tokens": step * spec.tokens_per_step,
                             **measure_checkpoint(folder / f"step{step}", validation, training)})  # fmt: skip
        write_atomically(path, json.dumps(rows))
    return _derived_columns(pd.DataFrame(json.loads(path.read_text())))


def saturation_verdict(table: pd.DataFrame, tolerance: float = 0.01, jump: float = 0.2) -> pd.DataFrame:
    """Did each run saturate? One row per run, computed from its checkpoints (paper §3 and §4).

    A run *saturates* when its held-out loss ends more than ``tolerance`` nats above its minimum while the loss
    on the training sample does not fall below its own value at that minimum (otherwise the rise is
    overfitting). Anisotropy and singular entropy *jump* when their maximum after the held-out minimum exceeds
    their value at the minimum by more than ``jump`` (relative).

    Args:
        table: rows of :func:`load_snapshot` (``run``, ``step``, ``tokens_per_parameter``, ``heldout_loss``,
            ``train_loss``, ``last_anisotropy``, ``singular_entropy``).
        tolerance: rise of the held-out loss (nats) that counts as saturation.
        jump: relative rise of anisotropy or singular entropy that counts as a jump.
    """
    rows = {}
    for run_name, group in table.groupby("run", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        best = int(group.heldout_loss.idxmin())
        after = group.iloc[best:]
        rise = float(group.heldout_loss.iloc[-1] - group.heldout_loss.iloc[best])
        train_fell = bool(group.train_loss.iloc[-1] < group.train_loss.iloc[best] - tolerance)
        rows[run_name] = {
            "tokens per parameter": float(group.tokens_per_parameter.iloc[-1]),
            "lowest held-out loss at step": int(group.step.iloc[best]),
            "last step": int(group.step.iloc[-1]),
            "held-out rise after minimum": rise,
            "final held-out loss": float(group.heldout_loss.iloc[-1]),
            "final training-sample loss": float(group.train_loss.iloc[-1]),
            "saturated": bool(rise > tolerance and not train_fell),
            "overfitting": bool(rise > tolerance and train_fell),
            "final anisotropy": float(group.last_anisotropy.iloc[-1]),
            "anisotropy jumped": bool(after.last_anisotropy.max() > (1 + jump) * group.last_anisotropy.iloc[best]),
            "singular entropy jumped": bool(
                after.singular_entropy.max() > (1 + jump) * group.singular_entropy.iloc[best]
            ),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def spectrum_phases(table: pd.DataFrame, early: float = 0.1) -> pd.DataFrame:
    """The phases of the head's singular entropy along each run (paper Figure 5), one row per run.

    An untrained head is nearly flat (entropy near 0). The warm-up frequency phase steepens it (an early
    *peak*, searched in the first ``early`` fraction of the run's tokens); training then flattens it to a
    *minimum* (searched after the peak); a saturating model's spectrum then collapses (the entropy rises again,
    tenfold in the paper): ``rebound`` is the final value over that minimum, and may exceed the early peak.
    """
    rows = {}
    for run_name, group in table[table.step > 0].groupby("run", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        warm_up = group[group.tokens_per_parameter <= early * group.tokens_per_parameter.max()]
        peak = int(warm_up.singular_entropy.idxmax()) if len(warm_up) else 0
        after = group.iloc[peak:]
        low = int(after.singular_entropy.idxmin())
        rows[run_name] = {
            "peak": float(group.singular_entropy[peak]),
            "peak at tokens per parameter": float(group.tokens_per_parameter[peak]),
            "minimum after the peak": float(group.singular_entropy[low]),
            "minimum at tokens per parameter": float(group.tokens_per_parameter[low]),
            "final": float(group.singular_entropy.iloc[-1]),
            "rebound": float(group.singular_entropy.iloc[-1] / group.singular_entropy[low]),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib.saturation run [--steps N] [--threads N]`` (``make long-run``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m satlib.saturation")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--steps", type=int, default=7000, help="optimisation steps per model (32 x 128 tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
    parser.add_argument("--widths", type=int, nargs="+", default=[4], help="widths to train (default 4; 4 8 for both)")
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    if args.steps < 100:
        raise SystemExit(f"--steps {args.steps} is too short to show anything: use at least 100 (default 7000)")
    run(long_runs(args.steps), args.snapshot, args.threads, tuple(args.widths))
    table, provenance = load_snapshot(args.snapshot)
    print(saturation_verdict(table).to_string())
    print(f"snapshot: {args.snapshot} ({provenance['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
