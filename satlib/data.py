"""External data: the paper's reference values and Pythia's evaluation results (paper §3, Table 1, figures).

* :func:`paper_values` reads a table of values from the paper (package data, each with its provenance lines):
  ``table1_*`` and ``constants`` are exact, every ``fig*`` table was digitised from the paper's figures.
* :func:`pythia_evaluations` returns the LM Evaluation Harness results of every Pythia v1 model at every
  evaluated checkpoint as one tidy table. The JSON files are read from the data directory
  (``satlib.config.data_dir() / "pythia-evals"``), their checksums verified; when they are absent and the
  network is available they are downloaded from the pinned public commit into the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from satlib.config import cache_dir, data_dir
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError
from satlib.network import network_available, require_network
from satlib.storage import progress, write_atomically

PACKAGE_DATA = Path(__file__).resolve().parent / "data_files"
#: Pythia's repository at the commit the evaluation files were taken from (see ../shared/README.md).
PYTHIA_EVALS_COMMIT = "a19eecb807ec2c79a39ebf18108816e6ffffc1d5"
PYTHIA_EVALS_URL = f"https://raw.githubusercontent.com/EleutherAI/pythia/{PYTHIA_EVALS_COMMIT}/evals/"
#: Pythia trains with batches of 1,024 sequences of 2,048 tokens (Biderman et al. 2023).
TOKENS_PER_STEP = 2_097_152

_VARIANT = re.compile(r"^pythia-(?P<size>[\d.]+[mb])(?P<suffix>(?:-[\w.]+)*)$")


def paper_values(name: str) -> pd.DataFrame:
    """A table of the paper's values, e.g. ``paper_values("fig1b_checkpoints")``.

    Raises a one-line error listing the available names when ``name`` is unknown.
    """
    path = PACKAGE_DATA / "paper" / f"{name}.csv"
    if not path.is_file():
        available = sorted(p.stem for p in (PACKAGE_DATA / "paper").glob("*.csv"))
        raise ConfigurationError(f"no paper table {name!r}: available tables are {available}")
    return pd.read_csv(path, comment="#")


def paper_provenance(name: str) -> str:
    """The provenance lines (``#`` header) of a paper table, without the ``#``."""
    paper_values(name)  # validates the name
    lines = (PACKAGE_DATA / "paper" / f"{name}.csv").read_text().splitlines()
    return "\n".join(line.lstrip("# ").rstrip() for line in lines if line.startswith("#"))


def _checksums() -> dict[str, str]:
    """Expected SHA-256 of every evaluation file, keyed by path relative to the ``pythia-evals`` folder."""
    entries = (PACKAGE_DATA / "pythia-evals.sha256").read_text().split("\n")
    return {path: digest for digest, path in (line.split(maxsplit=1) for line in entries if line.strip())}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(url: str, target: Path) -> None:
    """Fetch ``url`` into ``target`` atomically (a temporary file renamed into place)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        write_atomically(target, response.read())


def pythia_evals_dir(directory: Path | None = None, base_url: str = PYTHIA_EVALS_URL) -> Path:
    """Folder holding ``pythia-v1/...`` with every evaluation file present and verified.

    Looks in ``directory`` (default: ``data_dir() / "pythia-evals"``); when files are missing there, uses
    ``cache_dir() / "data" / "pythia-evals"``, downloading what is missing when the network is available.
    Every file's SHA-256 is checked against the list shipped with satlib.
    """
    expected = _checksums()
    candidates = [Path(directory)] if directory is not None else [data_dir() / "pythia-evals"]
    candidates.append(cache_dir() / "data" / "pythia-evals")
    folder = next((c for c in candidates if all((c / p).is_file() for p in expected)), None)
    if folder is None:
        folder = candidates[-1]
        missing = [p for p in expected if not (folder / p).is_file()]
        local_server = base_url.startswith(("http://127.0.0.1", "http://localhost"))
        if not local_server and not network_available("raw.githubusercontent.com"):
            raise MissingArtefactError(
                f"Pythia's evaluation files are not in {candidates[0]} and there is no network to download them: "
                f"set SATLIB_DATA_DIR to a folder holding pythia-evals/ (see README.md)"
            )
        for relative in progress(missing, desc="downloading Pythia evaluations", unit="file"):
            _download(base_url + relative, folder / relative)
    corrupt = [p for p, digest in expected.items() if _sha256(folder / p) != digest]
    if corrupt:
        raise DamagedArtefactError(
            f"{len(corrupt)} Pythia evaluation files in {folder} fail their checksum (first: {corrupt[0]}): "
            "delete them and run again to fetch clean copies"
        )
    return folder


def _parse_variant(folder_name: str) -> tuple[str, bool, str]:
    """``pythia-1b-bf16`` -> (``pythia-1b``, deduped=False, variant ``bf16``); the 1B bf16 run is the standard 1B."""
    match = _VARIANT.match(folder_name)
    if match is None:
        raise DamagedArtefactError(
            f"unexpected Pythia folder name {folder_name!r}: is the data directory's pythia-evals complete?"
        )
    suffixes = [s for s in match["suffix"].split("-") if s]
    deduped = "deduped" in suffixes
    variant = "-".join(s for s in suffixes if s != "deduped")
    return f"pythia-{match['size']}", deduped, variant


@cache
def _evaluations(folder: str) -> pd.DataFrame:
    rows = []
    root = Path(folder) / "pythia-v1"
    for path in sorted(root.rglob("*.json")):
        parts = path.relative_to(root).parts  # (model folder, [zero-shot|five-shot|baseline|intervention,] file)
        model, deduped, variant = _parse_variant(parts[0])
        run = parts[1] if len(parts) == 3 and parts[1] in {"baseline", "intervention"} else "standard"
        run += "-long" if "-long_step" in path.name else ""  # a longer intervention run of the 1.4B
        content = json.loads(path.read_text())
        revision = re.search(r"revision=step(\d+)", content["config"]["model_args"])
        step = int(revision.group(1)) if revision else int(re.search(r"step(\d+)", path.stem).group(1))
        shots = int(content["config"].get("num_fewshot", 5 if path.parent.name == "five-shot" else 0))
        for task, metrics in content["results"].items():
            for metric, value in metrics.items():
                if metric.endswith("_stderr"):
                    continue
                stderr = metrics.get(f"{metric}_stderr")
                rows.append((model, deduped, variant, run, shots, step, task, metric, value, stderr))
    columns = ["model", "deduped", "variant", "run", "shots", "step", "task", "metric", "value", "stderr"]
    table = pd.DataFrame(rows, columns=columns)
    table.insert(6, "tokens", table.step * TOKENS_PER_STEP)
    sizes = paper_values("pythia_models").set_index("model").n_params
    table.insert(1, "n_params", table.model.map(sizes).astype("Int64"))
    return table.sort_values([*columns[:6], "task", "metric"], ignore_index=True)


def pythia_evaluations(directory: Path | None = None) -> pd.DataFrame:
    """Every Pythia v1 evaluation result as a tidy table (one row per model, checkpoint, task and metric).

    Columns: ``model`` (e.g. ``pythia-160m``), ``n_params``, ``deduped``, ``variant`` (``""`` for the standard
    run; ``bf16`` for the standard 1B, or a batch-size variant such as ``0.5MtokBS``), ``run`` (``standard``, or
    ``baseline`` / ``intervention[-long]`` for the deduped models' gender-bias experiments), ``shots`` (0 or 5, from
    each file's configuration), ``tokens`` (step x 2,097,152), ``step``, ``task``, ``metric``, ``value``,
    ``stderr``. Source: EleutherAI/pythia at commit ``PYTHIA_EVALS_COMMIT``, folder ``evals/pythia-v1/``; these
    come from an older harness version than the paper's Table 1.
    """
    return _evaluations(str(pythia_evals_dir(directory))).copy()


def evaluation_curves(
    table: pd.DataFrame, task: str, metric: str, *, shots: int = 0, deduped: bool = False, column: str = "value"
) -> pd.DataFrame:
    """One task's metric along training for each standard Pythia model: index ``step``, one column per model.

    Keeps the standard runs only (the 1B's is the ``bf16`` one); columns are ordered by model size. ``column`` is
    ``value`` or ``stderr`` (the harness's standard error of the value).
    """
    selected = table[
        (table.task == task)
        & (table.metric == metric)
        & (table.shots == shots)
        & (table.deduped == deduped)
        & (table.run == "standard")
        & table.variant.isin(["", "bf16"])
    ]
    if selected.empty:
        raise ConfigurationError(
            f"no {shots}-shot results for task {task!r} and metric {metric!r}: check table.task/metric"
        )
    curves = selected.pivot_table(index="step", columns="model", values=column, aggfunc="first")
    order = selected.drop_duplicates("model").sort_values("n_params").model
    return curves[list(order)]


#: A public copy of The Pile without its copyrighted subsets, streamed by the ``pythia`` preset (paper Figure 1a).
PILE_DATASET = "monology/pile-uncopyrighted"


def pile_sample(
    tokenizer: object,
    n_tokens: int = 50_000,
    *,
    dataset: str = PILE_DATASET,
    split: str = "test",
    data_files: str | list[str] | None = None,
) -> np.ndarray:
    """Token ids of the first documents of a Pile split, each followed by end-of-text, cut at ``n_tokens``.

    The paper's Figure 1a evaluates Pythia on 50k tokens sampled from The Pile. The documents are streamed
    with the ``datasets`` library (only what is needed is downloaded); ``dataset="json"`` with ``data_files``
    reads a local copy instead, as the tests do.
    """
    import datasets  # optional dependency (extra "pythia"): only the pythia preset reads The Pile

    if data_files is None:
        require_network(f"streaming {dataset}", "run the book with PRESET='tiny' (make book), or set the pile_files "
                        "setting to a local JSON Lines copy with a 'text' field")  # fmt: skip
    stream = datasets.load_dataset(dataset, split=split if data_files is None else "train", streaming=True,
                                   data_files=data_files)  # fmt: skip
    ids: list[int] = []
    for record in stream:
        ids.extend([*tokenizer(record["text"]).input_ids, tokenizer.eos_token_id])
        if len(ids) > n_tokens:
            break
    if len(ids) <= n_tokens:
        raise ConfigurationError(f"{dataset} gave only {len(ids)} tokens, fewer than the {n_tokens} asked for")
    return np.asarray(ids[: n_tokens + 1], dtype=np.int64)
