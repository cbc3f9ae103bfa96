"""Can the book's own models saturate? The long-run experiment and its frozen snapshot (experiments layer; §3, §4).

The paper's saturation is a late rise of held-out loss, with last-layer anisotropy jumping towards 1 and the
head's singular spectrum collapsing. Pythia-14M shows it after several thousand tokens per parameter; the ``tiny``
suite sees at most 18. This experiment pushes tokens per parameter as far as a 2-core machine allows in about an
hour: very small widths (d = 4 and 8, where the output layer sets the cost), the whole offline corpus repeated
over several epochs, and two schedules (Pythia's cosine, and constant after warm-up).

Because repeated epochs could turn saturation into overfitting, every checkpoint is measured on a fixed sample of
the *training* split beside the validation split: saturation raises both, overfitting only the second.

The run is long, so the book never reruns it: ``python -m satlib long-run`` (``make long-run``) trains, measures
every checkpoint through :mod:`satlib.sweep`, and writes the measurements, not the weights, to a small JSON snapshot
inside the package with its provenance (command, commit, date, machine, wall time). The chapters read it.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from satlib.config import source_commit
from satlib.errors import MissingArtefactError
from satlib.evaluate import evaluation_windows
from satlib.saturation import derived_columns
from satlib.specs import SCHEDULES, SuiteSpec
from satlib.storage import read_json, write_json
from satlib.sweep import measure_trained
from satlib.tokenization import token_ids
from satlib.training import CorpusBatches, ensure_trained, training_record

SNAPSHOT = Path(__file__).resolve().parent / "data_files" / "snapshots" / "long_run.json"
#: The command that remakes the snapshot today (``make long-run`` runs it); a snapshot records the command of its day.
COMMAND = "python -m satlib long-run"
#: Tokens of the validation split, and of the start of the training split, that every checkpoint is scored on.
SAMPLE_TOKENS = 32_768
#: Measurement names of snapshots written before the one measurement path (kept readable).
_OLD_NAMES = {"anisotropy": "anisotropy_profile", "singular_values": "head_singular_values"}


def long_runs(steps: int = 7000) -> list[SuiteSpec]:
    """The long runs: each schedule is one suite of widths 4 and 8.

    7,000 steps of 32 x 128 tokens are 28.7M tokens per model, about 4.8 epochs of the training split and
    860 tokens per parameter at d = 4 (33,264 parameters, nearly all in the embedding and the head).
    """
    return [
        SuiteSpec(f"long-{schedule}", (4, 8), batch_size=32, steps=steps, checkpoints_evenly=40, schedule=schedule)
        for schedule in SCHEDULES
    ]


def training_provenance(record: dict) -> dict:
    """What a snapshot records of one model's own training, from its completion record
    (:func:`satlib.training.training_record`): seconds and tokens per second of its last training session, the commit
    of that session and when it finished (``not recorded`` for models trained before the record held them)."""
    return {
        "seconds_last_session": record["seconds_this_run"],
        "tokens_per_second_last_session": record["tokens_per_second"],
        "commit": record.get("commit", "not recorded"),
        "finished": record.get("finished", "not recorded"),
    }


def corpus_samples(vocab_size: int, context: int) -> dict[str, torch.Tensor]:
    """The validation sample (``evaluation``) and the training-split sample (``training``) every checkpoint of a
    corpus-trained run is measured on."""
    return {
        "evaluation": evaluation_windows(token_ids("validation", vocab_size), context, SAMPLE_TOKENS),
        "training": evaluation_windows(token_ids("train", vocab_size), context, SAMPLE_TOKENS),
    }


def run(specs: list[SuiteSpec], snapshot: Path = SNAPSHOT, widths: tuple[int, ...] = (), jobs: int = 1) -> dict:
    """Train every long run (resuming any that was interrupted), measure each checkpoint, write the snapshot.

    Args:
        specs: the runs (:func:`long_runs`). snapshot: where the JSON snapshot is written (atomically).
        widths: train and measure only these widths of each run (default all); the others keep their cache key.
        jobs: models trained at once (one thread each).

    Returns:
        The snapshot: ``provenance`` and ``rows`` (one per run, width and checkpoint).
    """
    started = time.perf_counter()
    runs = [
        (spec, width, CorpusBatches(spec.vocab_size))
        for spec in specs
        for width in spec.widths
        if not widths or width in widths
    ]
    before = ensure_trained(runs, jobs)
    table = measure_trained(runs, corpus_samples(specs[0].vocab_size, specs[0].context))
    table = table.drop(columns=["group", "model", "layers", "seed"])
    records = {f"{spec.schedule}-d{width}": training_record(spec, width, data) for spec, width, data in runs}
    provenance = {
        "command": " ".join(["python -m satlib", *sys.argv[1:]]),
        "commit": source_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}, "
        "1 thread per model",
        "wall_seconds": round(time.perf_counter() - started),
        # this session's own work: the models it trained (none when every model was already trained and only
        # measured); each model's training, possibly an earlier session's, is recorded under "training"
        "trained_this_session": [
            f"{spec.schedule}-d{width}"
            for (spec, width, _), status in zip(runs, before, strict=True)
            if status != "complete"
        ],
        "training": {name: training_provenance(r) for name, r in records.items()},
        "specs": [asdict(spec) for spec in specs],  # the cache keys; widths_trained says which models ran
        "widths_trained": sorted({width for _, width, _ in runs}),
        "sample_tokens": SAMPLE_TOKENS,
        "train_split_tokens": len(token_ids("train", specs[0].vocab_size)),
    }
    result = {"provenance": provenance, "rows": table.to_dict(orient="records")}
    write_json(snapshot, result)
    return result


def provenance_tables(provenance: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A snapshot's provenance as two tables: the session that last wrote the file (command, commit, date, machine,
    wall time, the models it trained: none when it only measured models trained before), and each model's own
    training (seconds and speed of its last session, the commit it was trained at, when it finished)."""
    keys = ("command", "commit", "date", "machine", "wall_seconds", "trained_this_session")
    session = {key: provenance.get(key, "not recorded") for key in keys}
    if "recovered" in provenance:  # fields added afterwards from the history, not recorded by the run itself
        session["recovered"] = provenance["recovered"]
    if isinstance(session["trained_this_session"], list):
        session["trained_this_session"] = ", ".join(session["trained_this_session"]) or "none (measurements only)"
    training = pd.DataFrame(provenance["training"]).T.rename_axis("run")
    return pd.Series(session, name="the session that wrote the snapshot").to_frame(), training


def load_snapshot(path: Path = SNAPSHOT) -> tuple[pd.DataFrame, dict]:
    """The frozen snapshot as a table (one row per run, width and checkpoint) and its provenance.

    Adds ``run`` (e.g. ``cosine d=4``) and :func:`satlib.saturation.derived_columns` (``tokens_per_parameter``,
    ``last_anisotropy``, ``singular_entropy``).
    """
    if not path.is_file():
        raise MissingArtefactError(f"no long-run snapshot at {path}: make it with `make long-run` (about an hour)")
    snapshot = read_json(path, "restore it with `git checkout` or remake it with `make long-run`")
    table = pd.DataFrame(snapshot["rows"]).rename(columns=_OLD_NAMES)
    return derived_columns(table.assign(run=table.schedule + " d=" + table.width.astype(str))), snapshot["provenance"]
