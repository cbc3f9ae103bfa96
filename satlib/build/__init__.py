"""Executing the chapters for the book: papermill, a few at a time; failures never overwrite; a record of each build.

``python -m satlib execute [--parameters FILE]`` runs every ``notebooks/*.ipynb`` ``jobs`` at a time, each
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

``python -m satlib html [--parameters FILE]`` builds the HTML of that book: ``_build/html`` for the published
book, ``_build/params/<file stem>/html`` for a parameter file's, from a generated table of contents that lists the
chapters that executed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import yaml

from satlib.build.execution import (
    FAILED,
    HEAVY_FIRST,
    INTERRUPTED,
    INTERRUPTED_STATUS,
    NOT_STARTED,
    OK,
    PAPERMILL_TAGS,
    TIMED_OUT,
    Execution,
    Stopper,
    execute_all,
    execute_notebook,
    execution_order,
    failing_cell,
    kill_process_tree,
    summary,
)
from satlib.build.ledger import LEDGER_PAGE, write_claims_json, write_ledger
from satlib.build.parameters import Parameter, check_parameters, load_parameters, notebook_parameters
from satlib.build.record import (
    RECORD_NAME,
    build_info_page,
    build_record,
    read_record,
    source_commit,
    write_build_info,
)
from satlib.errors import ConfigurationError, SatlibError
from satlib.storage import write_atomically

#: Exit status of a mistake in the command line or the parameter file.
CONFIGURATION_STATUS = 2


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
        if entry.name in ("notebooks", folders.page.name, LEDGER_PAGE.name) or entry.name.startswith("."):
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
    claims = write_ledger(folders.notebooks, folders.page.parent / LEDGER_PAGE.name)
    if parameters_file is None:
        for stale in ("_build/html", "_build/.doctrees", "_build/jupyter_execute"):
            shutil.rmtree(stale, ignore_errors=True)
        status = subprocess.run([jupyter_book(), "build", "--all", "-W", "-n", "--keep-going", "."]).returncode
        if folders.html.is_dir():
            write_claims_json(claims, folders.html)
        return status
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
        write_claims_json(claims, folders.html)
        print(f"The book for {parameters_file}: {folders.html / 'index.html'}")
    return status


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
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


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the command, the problem, where help is), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m satlib execute [NOTEBOOK ...] [--jobs 2] [--timeout 1200] [--parameters
    FILE] [--out DIR] [--logs DIR]`` and ``python -m satlib html [--parameters FILE]``."""
    parser = OneLineParser(
        prog="python -m satlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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


__all__ = [
    "CONFIGURATION_STATUS", "FAILED", "HEAVY_FIRST", "INTERRUPTED", "INTERRUPTED_STATUS", "NOT_STARTED", "OK",
    "PAPERMILL_TAGS", "RECORD_NAME", "TIMED_OUT", "BuildFolders", "Execution", "Parameter", "Stopper",
    "build_folders", "build_html", "build_info_page", "build_record", "check_parameters", "execute", "execute_all",
    "execute_notebook", "execution_order", "failing_cell", "kill_process_tree", "load_parameters", "main",
    "notebook_parameters", "read_record", "source_commit", "stage_book", "summary", "write_build_info",
]  # fmt: skip
