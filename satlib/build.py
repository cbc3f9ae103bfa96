"""Executing the chapters for the book: papermill, a few at a time; failures never overwrite; a record of each build.

``python -m satlib.build execute [--parameters FILE]`` runs every ``notebooks/*.ipynb`` ``jobs`` at a time, each
under a wall-clock limit, and lists the failures with the notebook, the cell and the error (exit status 1).

* The parameter file is checked before any notebook runs, against the names and types of the notebooks' own
  ``parameters`` cells (a name must be accepted by every notebook), the presets and the settings of
  :mod:`satlib.config`; a mistake prints one line naming the file, the key and what is accepted (exit status 2;
  ``--debug`` or ``SATLIB_DEBUG=1`` shows the traceback).
* Without a parameter file the executed copies go to ``book/notebooks/`` (the published book) and the logs to
  ``_build/logs/``; with one, everything goes to ``_build/params/<file stem>/`` (see :func:`build_folders`), so
  that a parameter run never touches the published book.
* Each notebook executes into a temporary file renamed over the previous copy only on success; a failed
  execution is kept as ``<logs>/<name>.failed.ipynb`` and named in the summary.
* SIGINT or SIGTERM kills the running notebooks' process groups (papermill's and the kernel's, which runs in a
  session of its own) at once, starts nothing new, and ends with exit status 130.
* Every run records each notebook's status and time, the commit, date, machine, preset, parameter file and
  versions in ``<logs>/executions.json`` and renders them as the book's build-information page
  (``book/build_info.md``, after QuantEcon's execution-statistics page).

``python -m satlib.build html [--parameters FILE]`` builds the HTML of that book: ``_build/html`` for the published
book, ``_build/params/<file stem>/html`` for a parameter file's, from a generated table of contents that lists the
chapters that executed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from satlib.errors import ConfigurationError, SatlibError
from satlib.network import HF_OFFLINE_VARIABLES
from satlib.presets import PRESETS, get_preset, with_settings

#: Cell tags papermill adds to an executed notebook; cells carrying them are not in the source notebook.
PAPERMILL_TAGS = frozenset({"injected-parameters", "papermill-error-cell-tag"})
#: The record of the last execution, in a build's logs folder.
RECORD_NAME = "executions.json"
#: Exit status of a build stopped by SIGINT or SIGTERM (128 + SIGINT, the shell's convention for Ctrl-C).
INTERRUPTED_STATUS = 130
#: Exit status of a mistake in the command line or the parameter file.
CONFIGURATION_STATUS = 2
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


@dataclass(frozen=True)
class BuildFolders:
    """Where one build writes: executed notebooks, logs and record, the build-information page, the HTML."""

    notebooks: Path
    logs: Path
    page: Path
    html: Path


def build_folders(parameters_file: Path | None) -> BuildFolders:
    """The folders of the published book (no parameter file) or of a parameter file's book.

    A parameter file ``params/paper.yaml`` builds under ``_build/params/paper/``, laid out as a book of its own:
    ``book/notebooks/`` (executed copies), ``book/build_info.md``, ``logs/``, and ``html/`` (see :func:`stage_book`).
    """
    if parameters_file is None:
        return BuildFolders(
            Path("book/notebooks"), Path("_build/logs"), Path("book/build_info.md"), Path("_build/html")
        )
    root = Path("_build/params") / parameters_file.stem
    return BuildFolders(root / "book/notebooks", root / "logs", root / "book/build_info.md", root / "html")


# ---------------------------------------------------------------------------------------------------------------
# Parameters: read, and checked against what the notebooks accept, before anything runs.


@dataclass(frozen=True)
class Parameter:
    """One name of a notebook's ``parameters`` cell: its type (``None``: any) and default value."""

    name: str
    kind: type | None
    default: object


def notebook_parameters(notebook: Path) -> dict[str, Parameter]:
    """The names a notebook's ``parameters`` cell assigns (``NAME = literal`` or ``NAME: type = value``), with the
    type of the literal (or the annotation) and its value."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigurationError(f"{notebook}: cannot read the notebook ({error}): pass a Jupyter notebook") from None
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ConfigurationError(
            f"{notebook}: no cell tagged 'parameters': tag the cell that assigns PRESET, SEED and SETTINGS"
        )
    source = "\n".join("".join(cell.get("source", "")) for cell in tagged)
    try:
        statements = ast.parse(source).body
    except SyntaxError as error:
        raise ConfigurationError(f"{notebook}: its parameters cell is not valid Python ({error.msg})") from None
    accepted = {}
    for statement in statements:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value, annotation = statement.targets[0], statement.value, None
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value, annotation = statement.target, statement.value, statement.annotation
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            default = ast.literal_eval(value)
        except ValueError:
            default = None
        kind = _annotated_type(annotation) if annotation is not None else type(default) if default is not None else None
        accepted[target.id] = Parameter(target.id, kind, default)
    return accepted


def _annotated_type(annotation: ast.expr) -> type | None:
    names = {kind.__name__: kind for kind in (str, int, float, bool, dict, list)}
    return names.get(annotation.id) if isinstance(annotation, ast.Name) else None


def _fits(value: object, kind: type | None) -> bool:
    """Whether a parameter value has a notebook's type: ``bool`` is not a number, an ``int`` is a ``float``."""
    if kind is None:
        return True
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def load_parameters(path: Path | None) -> dict:
    """Parameters for every notebook from a YAML mapping file (``None``: no parameters)."""
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigurationError(
            f"parameter file {path} not found: pass an existing YAML file such as params/tiny.yaml"
        )
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise ConfigurationError(f"parameter file {path} is not valid YAML: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"parameter file {path} cannot be read: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigurationError(
            f"parameter file {path} must hold a mapping such as 'PRESET: tiny', got a {type(values).__name__}"
        )
    return values


def check_parameters(values: dict, notebooks: list[Path], source: Path | str) -> None:
    """Refuse, in one line naming ``source`` and the key, any parameter some notebook would not take: a name that
    is not in every notebook's parameters cell, a value of another type, an unknown preset, or settings that
    :func:`satlib.presets.with_settings` refuses for that preset."""
    accepted = {notebook: notebook_parameters(notebook) for notebook in notebooks}
    common = [
        parameter
        for name, parameter in next(iter(accepted.values())).items()
        if all(name in names for names in accepted.values())
    ]
    listing = ", ".join(f"{p.name} ({p.kind.__name__ if p.kind else 'any type'})" for p in common) or "nothing"
    for name, value in values.items():
        lacking = [notebook.name for notebook, names in accepted.items() if name not in names]
        if len(lacking) == len(notebooks):
            raise ConfigurationError(
                f"{source}: unknown parameter {name!r}: the notebooks' parameters cells accept {listing}"
            )
        if lacking:
            raise ConfigurationError(
                f"{source}: parameter {name!r} is not in the parameters cell of {', '.join(lacking)}: "
                f"use names every notebook accepts: {listing}"
            )
        for notebook, names in accepted.items():
            kind = names[name].kind
            if not _fits(value, kind):
                raise ConfigurationError(
                    f"{source}: {name} must be {kind.__name__} (as in {notebook.name}'s parameters cell), "
                    f"got {value!r} ({type(value).__name__})"
                )
    for names in accepted.values():
        preset = values.get("PRESET", names["PRESET"].default if "PRESET" in names else "tiny")
        try:
            get_preset(preset)
        except ValueError:
            raise ConfigurationError(
                f"{source}: PRESET: unknown preset {preset!r}: use one of {sorted(PRESETS)}"
            ) from None
        settings = values.get("SETTINGS", names["SETTINGS"].default if "SETTINGS" in names else None)
        if settings:
            try:
                with_settings(get_preset(preset), settings)
            except ValueError as error:
                raise ConfigurationError(f"{source}: SETTINGS: {error}") from None


# ---------------------------------------------------------------------------------------------------------------
# Running notebooks: atomically, and stoppable at once.


def kill_process_tree(pid: int) -> None:
    """SIGKILL the process group of ``pid`` and of every descendant: the Jupyter kernel papermill starts runs in a
    session (and process group) of its own, as may whatever the kernel starts."""
    import psutil

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


#: Chapters that train heads for minutes on first run: started first (side by side with the default two workers),
#: so that the short chapters fill in after the first of them ends instead of leaving a worker idle at the end.
HEAVY_FIRST = ("04_rank_constrained_heads", "07_discussion")


def execution_order(notebook: Path) -> tuple[int, str]:
    """Sort key: the chapters of :data:`HEAVY_FIRST` first, then by name."""
    return (0 if notebook.stem in HEAVY_FIRST else 1, notebook.name)


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


# ---------------------------------------------------------------------------------------------------------------
# The record of a build, and the page that shows it.


def source_commit(folder: Path) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``folder``, with ``+dirty`` when its tree has changes
    (untracked files included), or ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        )
        if head.returncode != 0:
            return "unknown"
        changes = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    dirty = changes.returncode != 0 or bool(changes.stdout.strip())
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def build_record(
    results: list[Execution],
    parameters: dict,
    parameters_file: Path | None,
    interrupted_by: str | None = None,
    jobs: int = 1,
    wall_seconds: float | None = None,
    now: datetime | None = None,
) -> dict:
    """The record of a build (``executions.json``): its context and, per notebook, its status and time, and whether
    the book still has an earlier executed copy of a notebook that did not execute this time."""
    import satlib

    folder = results[0].notebook.resolve().parent if results else Path.cwd()
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "format": 1,
        "commit": source_commit(folder),
        "date": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
        "preset": parameters.get("PRESET", "tiny"),
        "parameters_file": None if parameters_file is None else str(parameters_file),
        "parameters": parameters,
        "versions": {"python": platform.python_version(), "satlib": satlib.__version__, "torch": _version("torch")},
        "interrupted_by": interrupted_by,
        "jobs": jobs,
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "notebooks": [
            {
                "name": result.notebook.stem,
                "source": str(result.notebook),
                "status": result.status,
                "seconds": round(result.seconds, 1),
                "error": result.error,
                "output": str(result.output),
                "failed_copy": None if result.failed_copy is None else str(result.failed_copy),
                "earlier_copy_kept": result.status != OK and result.output.is_file(),
            }
            for result in results
        ],
    }


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file renamed into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or ``None`` when there is none (or it cannot be read)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "notebooks" in record else None


def _cell(text: object) -> str:
    """Text for a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def build_info_page(record: dict | None, record_path: Path | str = Path("_build/logs") / RECORD_NAME) -> str:
    """The build-information page (MyST Markdown) for a record of :func:`build_record` (``None``: no execution
    recorded in this checkout)."""
    lines = ["# Build information", ""]
    if record is None:
        lines += [
            "The chapters of this copy of the book were not executed by `make execute` in this checkout: there is",
            f"no record in `{record_path}`. Their pages show whatever executed copies were here, if any. Run",
            "`make book` to execute every chapter and fill in this page.",
            "",
        ]
        return "\n".join(lines)
    notebooks = record["notebooks"]
    counts = {status: sum(n["status"] == status for n in notebooks) for status in (OK, FAILED, TIMED_OUT)}
    if record.get("interrupted_by"):
        outcome = f"interrupted by {record['interrupted_by']}"
    elif counts[FAILED] + counts[TIMED_OUT]:
        outcome = f"{counts[FAILED] + counts[TIMED_OUT]} of {len(notebooks)} chapters failed"
    else:
        outcome = f"all {len(notebooks)} chapters executed"
    machine = record["machine"]
    versions = record["versions"]
    lines += [
        "How the chapters of this copy of the book were executed (written by `make execute`, which runs",
        f"`python -m satlib.build execute`; the same record is in `{record_path}`).",
        "",
        "| | |",
        "|---|---|",
        f"| commit | `{_cell(record['commit'])}` |",
        f"| executed | {_cell(record['date'].replace('T', ' ').replace('Z', ' UTC'))} |",
        f"| machine | {_cell(machine['platform'])}, {machine['cores']} cores |",
        f"| preset | `{_cell(record['preset'])}` |",
        f"| parameter file | {'`' + _cell(record['parameters_file']) + '`' if record['parameters_file'] else 'none'} |",
        f"| versions | {', '.join(f'{_cell(name)} {_cell(version)}' for name, version in versions.items())} |",
        f"| outcome | {outcome} |",
        "",
        "## Chapters",
        "",
        "| chapter | status | time (s) |",
        "|---|---|---:|",
    ]
    lines += [f"| `{_cell(n['name'])}` | {_cell(n['status'])} | {n['seconds']:.1f} |" for n in notebooks]
    total = sum(n["seconds"] for n in notebooks)
    wall = f" in {record['wall_seconds']:.1f} s of wall time" if record.get("wall_seconds") is not None else ""
    lines += ["", f"Sum of the chapters' times: {total:.1f} s, {record.get('jobs', 1)} at a time{wall}.", ""]
    problems = [n for n in notebooks if n["status"] != OK]
    if problems:
        lines += ["Chapters that did not execute:", "", "```text"]
        for n in problems:
            shown = "the book shows an earlier execution" if n.get("earlier_copy_kept") else "the book has no page"
            lines.append(" ".join(f"{n['name']}: {n['status']}: {n['error']} ({shown})".split()).replace("`", "'"))
        lines += ["```", ""]
    return "\n".join(lines)


def write_build_info(record_path: Path, page: Path) -> None:
    """(Re)write the build-information page from the record at ``record_path`` (or say there is none)."""
    write_atomically(page, build_info_page(read_record(record_path), record_path))


# ---------------------------------------------------------------------------------------------------------------
# HTML.


def stage_book(folders: BuildFolders, parameters_file: Path, repository: Path = Path(".")) -> bool:
    """Lay out a parameter file's book beside its executed notebooks, for jupyter-book.

    Its root (``folders.page.parent.parent``) gets a ``_config.yml`` (the book's, titled after the file) and a
    ``_toc.yml`` (the book's, listing only the chapters that executed), and ``book/`` gets links to the book's own
    pages beside the executed notebooks and the build-information page. Returns whether every chapter is there.
    """
    root = folders.page.parent.parent
    (root / "book").mkdir(parents=True, exist_ok=True)
    for entry in sorted((repository / "book").iterdir()):
        if entry.name in ("notebooks", folders.page.name) or entry.name.startswith("."):
            continue
        link = root / "book" / entry.name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.symlink_to(entry.resolve())
    config = yaml.safe_load((repository / "_config.yml").read_text())
    config["title"] = f"{config.get('title', 'Book')} ({parameters_file})"
    config["exclude_patterns"] = [*config.get("exclude_patterns", []), "logs/*", "html/*"]
    write_atomically(
        root / "_config.yml", f"# Generated by satlib.build for {parameters_file}\n" + yaml.safe_dump(config)
    )
    toc = yaml.safe_load((repository / "_toc.yml").read_text())
    complete = True
    parts = []
    for part in toc.get("parts", []):
        chapters = []
        for chapter in part.get("chapters", []):
            if chapter["file"].startswith("book/notebooks/"):
                present = (root / f"{chapter['file']}.ipynb").is_file()
                complete &= present
                if not present:
                    continue
            chapters.append(chapter)
        if chapters:
            parts.append({**part, "chapters": chapters})
    toc["parts"] = parts
    header = f"# Generated by satlib.build for {parameters_file}: the chapters that executed\n"
    write_atomically(root / "_toc.yml", header + yaml.safe_dump(toc, sort_keys=False))
    return complete


def jupyter_book() -> str:
    """The jupyter-book command of this environment."""
    beside = Path(sys.executable).parent / "jupyter-book"
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise ConfigurationError("jupyter-book is not installed: run `make setup` (or pip install satlib[book])")
    return found


def build_html(parameters_file: Path | None) -> int:
    """Build the HTML book: the published one (``_build/html``) or a parameter file's; returns jupyter-book's
    exit status.

    The published book builds with warnings as errors; a parameter file's book does too when every chapter
    executed, and otherwise leaves the missing chapters out (their links warn) so that what ran is readable.
    """
    folders = build_folders(parameters_file)
    write_build_info(folders.logs / RECORD_NAME, folders.page)
    if parameters_file is None:
        for stale in ("_build/html", "_build/.doctrees", "_build/jupyter_execute"):
            shutil.rmtree(stale, ignore_errors=True)
        return subprocess.run([jupyter_book(), "build", "--all", "-W", "-n", "--keep-going", "."]).returncode
    if not parameters_file.is_file():
        raise ConfigurationError(f"parameter file {parameters_file} not found: pass an existing YAML file")
    complete = stage_book(folders, parameters_file)
    root = folders.page.parent.parent
    shutil.rmtree(root / "_build", ignore_errors=True)
    strict = ["-W"] if complete else []
    if not complete:
        print(f"Some chapters did not execute for {parameters_file}: building the others (see {folders.page}).")
    command = [jupyter_book(), "build", "--all", *strict, "-n", "--keep-going", str(root), "--path-output", str(root)]
    status = subprocess.run(command).returncode
    if (root / "_build" / "html" / "index.html").is_file():
        shutil.rmtree(folders.html, ignore_errors=True)
        os.replace(root / "_build" / "html", folders.html)
        print(f"The book for {parameters_file}: {folders.html / 'index.html'}")
    return status


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def execute(
    notebooks: Iterable[Path],
    parameters_file: Path | None,
    out: Path | None,
    logs: Path | None,
    jobs: int,
    timeout: float,
) -> int:
    """``execute``: check everything, run the notebooks, write the record and the page; returns the exit status."""
    notebooks = sorted(notebooks, key=execution_order)
    if not notebooks:
        raise ConfigurationError("no notebooks found: run from the repository root or name them")
    for notebook in notebooks:
        if not notebook.is_file():
            raise ConfigurationError(f"notebook {notebook} not found: name existing .ipynb files")
    parameters = load_parameters(parameters_file)
    check_parameters(parameters, notebooks, parameters_file or "the notebooks' defaults")
    folders = build_folders(parameters_file)
    if out is None or out == folders.notebooks:
        out, page, logs = folders.notebooks, folders.page, logs or folders.logs
    else:  # another folder: its record and page go beside it, never over the book's
        page, logs = out.parent / folders.page.name, logs or out.parent / "logs"
    stopper = Stopper()
    start = time.perf_counter()
    with stopper.handling():
        results = execute_all(notebooks, out, parameters, jobs, timeout, logs, stopper)
        wall_seconds = time.perf_counter() - start
        record = build_record(results, parameters, parameters_file, stopper.signal_name, jobs, wall_seconds)
        write_atomically(logs / RECORD_NAME, json.dumps(record, indent=1, default=str) + "\n")
        write_atomically(page, build_info_page(record, logs / RECORD_NAME))
    print(summary(results, stopper.signal_name))
    print(f"Record: {logs / RECORD_NAME}; page: {page}")
    if stopper.stopped:
        return INTERRUPTED_STATUS
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib.build execute [NOTEBOOK ...] [--jobs 2] [--timeout 1200] [--parameters
    FILE] [--out DIR] [--logs DIR]`` and ``python -m satlib.build html [--parameters FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m satlib.build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["execute", "html"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb (execute only)")
    parser.add_argument("--parameters", type=Path, default=None, help="YAML file of notebook parameters")
    parser.add_argument("--out", type=Path, default=None, help="default: book/notebooks, or the parameter file's")
    parser.add_argument(
        "--logs", type=Path, default=None, help="default: _build/logs, the parameter file's, or beside --out"
    )
    parser.add_argument("--jobs", type=_positive(int), default=2)
    parser.add_argument("--timeout", type=_positive(float), default=1200.0, help="seconds per notebook")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also SATLIB_DEBUG=1)")
    args = parser.parse_args(argv)
    try:
        if args.command == "html":
            return build_html(args.parameters)
        notebooks = args.notebooks or list(Path("notebooks").glob("*.ipynb"))
        return execute(notebooks, args.parameters, args.out, args.logs, args.jobs, args.timeout)
    except SatlibError as error:
        if args.debug or os.environ.get("SATLIB_DEBUG") == "1":
            raise
        print(error, file=sys.stderr)
        return CONFIGURATION_STATUS


if __name__ == "__main__":
    sys.exit(main())
