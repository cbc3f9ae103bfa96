"""Running notebooks with papermill: a few at a time, atomically, and stoppable at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from satlib.network import HF_OFFLINE_VARIABLES
from satlib.presets import get_preset

#: Cell tags papermill adds to an executed notebook; cells carrying them are not in the source notebook.
PAPERMILL_TAGS = frozenset({"injected-parameters", "papermill-error-cell-tag"})
#: Exit status of a build stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's convention for Ctrl-C).
INTERRUPTED_STATUS = 130
#: Statuses of one notebook in a build.
OK, FAILED, TIMED_OUT, INTERRUPTED, NOT_STARTED = "ok", "failed", "timed out", "interrupted", "not started"


@dataclass(frozen=True)
class Execution:
    """Outcome of executing one notebook.

    Attributes:
        notebook: the source notebook.
        output: the executed copy (replaced only when this execution succeeded).
        seconds: wall time.
        error: ``None`` on success, else one line naming the cell and the error.
        status: one of ``ok``, ``failed``, ``timed out``, ``interrupted``, ``not started``.
        failed_copy: where the failed execution was kept, if it got as far as writing one.
    """

    notebook: Path
    output: Path
    seconds: float
    error: str | None
    status: str = OK
    failed_copy: Path | None = None


# ---------------------------------------------------------------------------------------------------------------
# Running notebooks: atomically, and stoppable at once.


def kill_process_tree(pid: int) -> None:
    """SIGKILL the process group of ``pid`` and of every descendant: the Jupyter kernel papermill starts runs in a
    session (and process group) of its own, as may whatever the kernel starts."""
    import psutil  # optional dependency (the book extra): only the book build kills kernels

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]  # listed before any dies: orphans lose their parent
    except psutil.NoSuchProcess:
        return
    groups = set()
    for process in family:
        try:
            groups.add(os.getpgid(process.pid))
        except ProcessLookupError:
            pass
    for group in groups - {os.getpgrp()}:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


class Stopper:
    """The running notebooks of a build, and the signal handlers that stop them all at once.

    Workers start processes through :meth:`start`, which refuses once a stop was asked; :meth:`stop` (the handler
    of SIGINT and SIGTERM while :meth:`handling` is in force) kills every running process tree.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen] = {}
        self.signal_name: str | None = None

    @property
    def stopped(self) -> bool:
        return self.signal_name is not None

    def start(self, command: list[str], **kwargs: object) -> subprocess.Popen | None:
        """``subprocess.Popen(command, **kwargs)``, or ``None`` once the build was stopped."""
        with self._lock:
            if self.stopped:
                return None
            process = subprocess.Popen(command, **kwargs)
            self._running[process.pid] = process
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.pop(process.pid, None)

    def stop(self, signum: int, frame: object = None) -> None:
        """Start nothing new and kill what runs (a signal handler)."""
        with self._lock:
            if self.signal_name is None:
                self.signal_name = signal.Signals(signum).name
            running = list(self._running.values())
        for process in running:
            kill_process_tree(process.pid)

    def handling(self) -> _Handlers:
        """Context manager: SIGINT and SIGTERM call :meth:`stop` (main thread only; elsewhere a no-op)."""
        return _Handlers(self)


class _Handlers:
    def __init__(self, stopper: Stopper) -> None:
        self.stopper = stopper
        self.previous: dict[int, object] = {}

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.stopper.stop)
        return self.stopper

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


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


def execute_notebook(
    notebook: Path,
    output: Path,
    parameters: dict,
    timeout: float,
    log_dir: Path,
    threads: int | None = None,
    stopper: Stopper | None = None,
) -> Execution:
    """Execute one notebook with papermill in a subprocess, killing it (and its kernel) after ``timeout``.

    The notebook executes into a temporary file beside ``output`` that replaces ``output`` only on success; a
    failed execution is moved to ``<log_dir>/<name>.failed.ipynb``. ``threads`` caps the kernel's OpenMP/BLAS
    threads: notebooks run side by side must share the cores, and oversubscribed PyTorch threads spin and slow
    everything down. ``stopper`` lets a signal stop the execution (and refuse to start it).
    """
    preset = get_preset(parameters.get("PRESET", "tiny"))
    stopper = stopper or Stopper()
    if stopper.stopped:
        return Execution(notebook, output, 0.0, "not started: the build was interrupted", NOT_STARTED)
    output.parent.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    parameter_file = log_dir / f"{notebook.stem}.parameters.yaml"
    parameter_file.write_text(yaml.safe_dump(parameters))
    partial = output.with_name(f".{output.stem}.partial.ipynb")  # hidden: jupyter-book never reads it
    command = [
        sys.executable, "-m", "papermill", str(notebook), str(partial),
        "--kernel", "python3", "--cwd", str(notebook.parent), "--no-progress-bar",
        "--parameters_file", str(parameter_file),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)
    if preset.offline:
        env.update(HF_OFFLINE_VARIABLES)
    elif "SATLIB_HUB_MIRROR" not in env:  # the hub is needed (the Makefile sets offline mode for tiny builds)
        for variable in HF_OFFLINE_VARIABLES:
            env.pop(variable, None)
    failed_copy = log_dir / f"{notebook.stem}.failed.ipynb"
    start = time.perf_counter()
    try:
        with open(log_dir / f"{notebook.stem}.log", "w") as log:
            process = stopper.start(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            if process is None:
                return Execution(notebook, output, 0.0, "not started: the build was interrupted", NOT_STARTED)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_process_tree(process.pid)
                process.wait()
                returncode = None
            finally:
                stopper.finished(process)
        seconds = time.perf_counter() - start
        if returncode == 0:
            os.replace(partial, output)
            failed_copy.unlink(missing_ok=True)  # an older failure no longer describes this notebook
            return Execution(notebook, output, seconds, None, OK)
        written = partial.is_file()
        described = _failing_cell_of(partial) if written else None
        if written:
            shutil.move(partial, failed_copy)
        if stopper.stopped:
            status, error = INTERRUPTED, f"interrupted by {stopper.signal_name}"
        elif returncode is None:
            status, error = TIMED_OUT, f"timed out after {timeout:.0f} s" + (f"; {described}" if described else "")
        else:
            status = FAILED
            error = described or f"papermill exited with status {returncode}: see {log_dir / notebook.stem}.log"
        return Execution(notebook, output, seconds, error, status, failed_copy if written else None)
    finally:
        partial.unlink(missing_ok=True)


def _failing_cell_of(path: Path) -> str | None:
    """:func:`failing_cell` of a notebook file, or ``None`` when it cannot be read (cut short by a kill)."""
    try:
        return failing_cell(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


#: Chapters that train for minutes on first run, longest first: started first (side by side with the default two
#: workers), so that the short chapters fill in at the end instead of one worker waiting for a long one.
HEAVY_FIRST = ("07_discussion", "04_rank_constrained_heads", "08_controlled_saturation")


def execution_order(notebook: Path) -> tuple[int, str]:
    """Sort key: the chapters of :data:`HEAVY_FIRST` first, in its order, then by name."""
    heavy = HEAVY_FIRST.index(notebook.stem) if notebook.stem in HEAVY_FIRST else len(HEAVY_FIRST)
    return (heavy, notebook.name)


def execute_all(
    notebooks: list[Path],
    out_dir: Path,
    parameters: dict,
    jobs: int,
    timeout: float,
    log_dir: Path,
    stopper: Stopper | None = None,
) -> list[Execution]:
    """Execute every notebook, ``jobs`` at a time; all are attempted whatever fails, unless ``stopper`` stops."""
    stopper = stopper or Stopper()
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, len(notebooks))))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(execute_notebook, nb, out_dir / nb.name, parameters, timeout, log_dir, threads, stopper)
            for nb in notebooks
        ]
        results = []
        for future in futures:
            result = future.result()
            if result.status != NOT_STARTED:
                label = result.status if result.status == OK else result.status.upper()
                print(f"[{label:>11}] {result.notebook.name} in {result.seconds:.1f} s", flush=True)
            results.append(result)
    return results


def summary(results: list[Execution], interrupted_by: str | None = None) -> str:
    """One block of text: how many notebooks ran, and for each failure where and why and where its copy lies."""
    failed = [r for r in results if r.status in (FAILED, TIMED_OUT)]
    lines = [f"Executed {sum(r.status != NOT_STARTED for r in results)} notebooks, {len(failed)} failed."]
    for result in failed:
        kept = f" (failed copy: {result.failed_copy}; {result.output} was left as it was)" if result.failed_copy else ""
        lines.append(f"  FAILED {result.notebook}: {result.error}{kept}")
    if interrupted_by is not None:
        stopped = [r.notebook.name for r in results if r.status == INTERRUPTED]
        skipped = [r.notebook.name for r in results if r.status == NOT_STARTED]
        lines.append(
            f"INTERRUPTED by {interrupted_by}: stopped {', '.join(stopped) or 'nothing'}; "
            f"not started {', '.join(skipped) or 'nothing'}; executed copies of those were left as they were."
        )
    return "\n".join(lines)
