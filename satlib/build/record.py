"""The record of each build and the build-information page (after QuantEcon's execution statistics)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from satlib.build.execution import FAILED, OK, TIMED_OUT, Execution
from satlib.config import VERSION
from satlib.storage import write_atomically

#: The record of the last execution, in a build's logs folder.
RECORD_NAME = "executions.json"

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
        "versions": {"python": platform.python_version(), "satlib": VERSION, "torch": _version("torch")},
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
        f"`python -m satlib execute`; the same record is in `{record_path}`).",
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
