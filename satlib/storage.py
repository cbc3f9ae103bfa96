"""Writing and reading what the book builds: atomic writes, locks, checksums, records, progress bars (ground layer).

Every artefact (a checkpoint, a cache entry, a result) is written so that a reader never sees half of it, and
carries a checksum recorded when it was written:

* :func:`write_atomically` and :func:`write_directory_atomically` write into a temporary file or folder beside the
  target, then rename it into place; a folder also gets ``checksums.json`` (SHA-256 of each file).
* :func:`verify_directory` checks a folder against its ``checksums.json``; :func:`content_id` names a folder by its
  content, so keys built from it survive moving the cache or the checkout.
* :func:`build_once` is the pattern of every cache: read what is complete without any lock (a read-only cache
  works), and take a file lock only to build what is missing, checking again under the lock (two processes build
  once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from tqdm import tqdm

from satlib.errors import DamagedArtefactError

CHECKSUMS = "checksums.json"
T = TypeVar("T")


def write_atomically(path: Path, payload: str | bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file renamed into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload.encode("utf-8") if isinstance(payload, str) else payload)
        os.chmod(temporary, 0o644)  # mkstemp makes files private; a shared cache must be readable by others
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON, atomically."""
    write_atomically(path, json.dumps(value, indent=1, sort_keys=False))


def read_json(path: Path, fix: str = "delete it and run again") -> Any:
    """Read a JSON file the book wrote; a damaged one raises :class:`DamagedArtefactError` naming the file and
    ``fix`` (what rebuilds it)."""
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedArtefactError(f"{path} is damaged ({type(error).__name__}): {fix}") from None


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _directory_checksums(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS and not p.name.startswith("."))
    return {str(p.relative_to(folder)): sha256_file(p) for p in files}


def write_directory_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a temporary folder beside ``directory``, record the checksum of every file in
    ``checksums.json``, then rename the folder into place (replacing an older one)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        temporary.chmod(0o755)  # mkdtemp makes folders private; a shared cache must be readable by others
        write(temporary)
        (temporary / CHECKSUMS).write_text(json.dumps(_directory_checksums(temporary), indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def directory_complete(directory: Path) -> bool:
    """Whether ``directory`` was written by :func:`write_directory_atomically` (it has its checksums)."""
    return (directory / CHECKSUMS).is_file()


def damaged_files(directory: Path) -> list[str]:
    """Files of a folder that are missing or differ from its ``checksums.json`` (all of them if it has none)."""
    if not directory_complete(directory):
        return ["checksums.json"]
    expected = read_json(directory / CHECKSUMS)
    return [name for name, digest in expected.items()
            if not (directory / name).is_file() or sha256_file(directory / name) != digest]  # fmt: skip


def verify_directory(directory: Path, fix: str) -> None:
    """Raise :class:`DamagedArtefactError` (one line, naming the first bad file and ``fix``) unless every file of
    ``directory`` matches the checksum recorded when it was written."""
    bad = damaged_files(directory)
    if bad:
        raise DamagedArtefactError(f"{directory} is damaged ({bad[0]} fails its checksum): {fix}")


def content_id(directory: Path) -> str:
    """A short name of a folder's content: the hash of its recorded checksums (or, for a folder that has none,
    such as a local copy of the hub, of its files' checksums computed now)."""
    if directory_complete(directory):
        payload = (directory / CHECKSUMS).read_bytes()
    else:
        payload = json.dumps(_directory_checksums(directory), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def digest(value: Any, length: int = 16) -> str:
    """A short SHA-256 of a JSON-serialisable value (keys sorted): the cache key of a specification."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:length]


def build_once(ready: Callable[[], bool], build: Callable[[], None], lock: Path) -> None:
    """Build an artefact unless it is ready: no lock when it is (a read-only cache can be read), a file lock
    around building, and a second check under the lock (a concurrent process may have built it meanwhile)."""
    if ready():
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if not ready():
            build()


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm progress bar shown on terminals only: quiet in notebooks and CI logs, whose outputs it would clutter."""
    return tqdm(iterable, disable=None, **kwargs)
