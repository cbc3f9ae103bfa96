"""Executing the chapters for the book: papermill, a few at a time, with one clear summary of failures.

``python -m satlib.build execute`` runs every ``notebooks/*.ipynb`` into ``book/notebooks/`` (the copies the
book renders), ``jobs`` at a time, each under a wall-clock limit; every notebook is attempted, then the
failures are listed with the notebook, the cell and the error, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from satlib.network import HF_OFFLINE_VARIABLES
from satlib.presets import get_preset

#: Cell tags papermill adds to an executed notebook; cells carrying them are not in the source notebook.
PAPERMILL_TAGS = frozenset({"injected-parameters", "papermill-error-cell-tag"})


@dataclass(frozen=True)
class Execution:
    """Outcome of executing one notebook.

    Attributes:
        notebook: the source notebook.
        output: the executed copy.
        seconds: wall time.
        error: ``None`` on success, else one line naming the cell and the error.
    """

    notebook: Path
    output: Path
    seconds: float
    error: str | None


def failing_cell(executed: dict) -> str | None:
    """Describe the first failed cell of an executed notebook (nbformat JSON), numbered as in the source.

    Returns ``None`` when no cell failed.
    """
    index = 0
    for cell in executed.get("cells", []):
        if PAPERMILL_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        index += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                source = "".join(cell.get("source", "")).strip().splitlines() or [""]
                return f"cell {index} ({source[0][:60]!r}): {output.get('ename')}: {output.get('evalue')}"
    return None


def load_parameters(path: Path | None) -> dict:
    """Parameters for every notebook from a YAML mapping file (``None``: no parameters)."""
    if path is None:
        return {}
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} not found: pass an existing YAML file")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"parameter file {path} must hold a mapping such as 'PRESET: tiny'")
    return values


def execute_notebook(
    notebook: Path, output: Path, parameters: dict, timeout: float, log_dir: Path, threads: int | None = None
) -> Execution:
    """Execute one notebook with papermill in a subprocess, killing it (and its kernel) after ``timeout``.

    ``threads`` caps the kernel's OpenMP/BLAS threads: notebooks run side by side must share the cores, and
    oversubscribed PyTorch threads spin and slow everything down.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    parameter_file = log_dir / f"{notebook.stem}.parameters.yaml"
    parameter_file.write_text(yaml.safe_dump(parameters))
    command = [
        sys.executable, "-m", "papermill", str(notebook), str(output),
        "--kernel", "python3", "--cwd", str(notebook.parent), "--no-progress-bar",
        "--parameters_file", str(parameter_file),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    if get_preset(parameters.get("PRESET", "tiny")).offline:
        env.update(HF_OFFLINE_VARIABLES)
    elif "SATLIB_HUB_MIRROR" not in env:  # the hub is needed (the Makefile sets offline mode for tiny builds)
        for name in HF_OFFLINE_VARIABLES:
            env.pop(name, None)
    start = time.perf_counter()
    with open(log_dir / f"{notebook.stem}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the kernel is in the same session: kill it too
            process.wait()
            returncode = None
    seconds = time.perf_counter() - start
    error = None
    if returncode != 0:
        described = failing_cell(json.loads(output.read_text())) if output.is_file() else None
        if returncode is None:
            error = f"timed out after {timeout:.0f} s" + (f"; {described}" if described else "")
        else:
            error = described or f"papermill exited with status {returncode}: see {log_dir / notebook.stem}.log"
    return Execution(notebook, output, seconds, error)


#: Chapters that train heads for minutes on first run: started first (side by side with the default two workers),
#: so that the short chapters fill in after the first of them ends instead of leaving a worker idle at the end.
HEAVY_FIRST = ("04_rank_constrained_heads", "07_discussion")


def execution_order(notebook: Path) -> tuple[int, str]:
    """Sort key: the chapters of :data:`HEAVY_FIRST` first, then by name."""
    return (0 if notebook.stem in HEAVY_FIRST else 1, notebook.name)


def execute_all(
    notebooks: list[Path], out_dir: Path, parameters: dict, jobs: int, timeout: float, log_dir: Path
) -> list[Execution]:
    """Execute every notebook, ``jobs`` at a time; all are attempted whatever fails."""
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(notebooks))))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(execute_notebook, nb, out_dir / nb.name, parameters, timeout, log_dir, threads)
            for nb in notebooks
        ]
        results = []
        for future in futures:
            result = future.result()
            status = "ok" if result.error is None else "FAILED"
            print(f"[{status:>6}] {result.notebook.name} in {result.seconds:.1f} s", flush=True)
            results.append(result)
    return results


def summary(results: list[Execution]) -> str:
    """One block of text: the time of each notebook and, for each failure, where and why."""
    failed = [r for r in results if r.error is not None]
    lines = [f"Executed {len(results)} notebooks, {len(failed)} failed."]
    lines += [f"  FAILED {r.notebook}: {r.error}" for r in failed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib.build execute [--jobs 2] [--timeout 1200] [--parameters FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m satlib.build", description=__doc__)
    parser.add_argument("command", choices=["execute"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=Path("book/notebooks"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per notebook")
    parser.add_argument("--parameters", type=Path, default=None, help="YAML file of notebook parameters")
    parser.add_argument("--logs", type=Path, default=Path("_build/logs"))
    args = parser.parse_args(argv)
    notebooks = sorted(args.notebooks or Path("notebooks").glob("*.ipynb"), key=execution_order)
    if not notebooks:
        print("no notebooks found: run from the repository root or name them", file=sys.stderr)
        return 2
    parameters = load_parameters(args.parameters)
    results = execute_all(notebooks, args.out, parameters, args.jobs, args.timeout, args.logs)
    print(summary(results))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
