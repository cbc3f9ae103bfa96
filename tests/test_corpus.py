"""satlib.corpus and satlib.tokenization: sources, splits by document, tokenizer round trips, and the faults a
corpus meets (a failed download, a truncated file)."""

from __future__ import annotations

import shutil
import sys

import pytest

from satlib import corpus, tokenization
from satlib.errors import ConfigurationError, DamagedArtefactError, MissingArtefactError, OfflineError


@pytest.fixture(scope="module")
def splits():
    return {split: corpus.documents(split) for split in corpus.SPLITS}


def test_manifest_records_every_source():
    manifest = corpus.manifest()
    assert [s["name"] for s in manifest["sources"]] == [s.name for s in corpus.SOURCES]
    for source in manifest["sources"]:
        assert len(source["sha256"]) == 64 and source["version"] and source["licence"] and source["documents"] > 0
    assert {s["domain"] for s in manifest["sources"]} == {"literature", "scripture", "technical documentation"}
    assert sum(s["text_bytes"] for s in manifest["sources"]) >= 20_000_000


def test_splits_share_no_document_and_parallel_texts_stay_together(splits):
    keys = {split: {d.key for d in docs} for split, docs in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    texts = {split: {d.text for d in docs} for split, docs in splits.items()}
    assert not texts["train"] & (texts["validation"] | texts["test"])
    # Each book of the Bible is in the same split in both translations.
    for split, docs in splits.items():
        bible = [d for d in docs if d.key.startswith("bible:")]
        by_key = {}
        for document in bible:
            by_key.setdefault(document.key, set()).add(document.source)
        assert all(sources == {"kjv", "web"} for sources in by_key.values()), split
    assert all(len(docs) > 10 for docs in splits.values())


def test_split_is_a_pure_function_of_the_key():
    assert corpus.split_of("bible:1") == corpus.split_of("bible:1")
    fractions = [corpus.split_of(f"k{i}") for i in range(20_000)]
    assert 0.04 < fractions.count("validation") / 20_000 < 0.06


def test_bad_split_and_empty_corpus(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="unknown split 'dev'"):
        corpus.documents("dev")
    monkeypatch.setattr(corpus, "SOURCES", ())
    with pytest.raises(MissingArtefactError, match="the corpus is empty"):
        corpus.build_corpus(tmp_path / "empty")
    assert not (tmp_path / "empty" / "manifest.json").exists()


@pytest.mark.parametrize("vocab_size", tokenization.BPE_VOCAB_SIZES)
def test_tokenizer_round_trip_and_size(vocab_size, splits):
    tokenizer = tokenization.load_tokenizer(vocab_size)
    assert len(tokenizer) == vocab_size
    for document in splits["validation"][::9]:
        sample = document.text[:2000]
        assert tokenizer.decode(tokenizer(sample).input_ids) == sample
    assert tokenizer.eos_token == tokenization.END_OF_TEXT
    with pytest.raises(ConfigurationError, match="no BPE tokenizer of vocabulary 1000"):
        tokenization.tokenizer_dir(1000)


def test_token_ids_are_cached_and_end_documents():
    ids = tokenization.token_ids("validation", 4096)
    eos = tokenization.load_tokenizer(4096).eos_token_id
    assert ids.dtype.name == "uint16" and ids.max() < 4096
    assert int((ids == eos).sum()) == len(corpus.documents("validation"))
    assert ids[-1] == eos


def test_a_failed_download_names_the_package_the_registry_and_the_command(tmp_path, monkeypatch, capsys):
    failing = [sys.executable, "-c", "import sys; sys.exit('Temporary failure in name resolution')"]
    monkeypatch.setattr(corpus, "_fetch_command", lambda source, downloads: failing)
    with pytest.raises(OfflineError) as info:
        corpus.build_corpus(tmp_path / "v2")
    message = str(info.value)
    assert "\n" not in message
    assert (
        "could not download r-cran-janeaustenr from Debian's registry (Temporary failure in name resolution)" in message
    )
    assert "fetch it with `" in message and str(tmp_path / "downloads") in message
    assert "corpus: downloading r-cran-janeaustenr from Debian's registry" in capsys.readouterr().err
    assert not (tmp_path / "v2" / "manifest.json").exists()


@pytest.mark.slow
def test_a_truncated_corpus_is_refused_and_the_advice_rebuilds_it(tmp_path, monkeypatch):
    """A copy of the corpus folder cut to a third of its documents: refused with one line; deleting the folder, as the
    line says, and building again (offline: the downloaded packages are kept) gives back the same corpus."""
    original = corpus.corpus_dir()
    copy = tmp_path / "corpus" / corpus.CORPUS_VERSION
    shutil.copytree(original.parent / "downloads", tmp_path / "corpus" / "downloads")
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns(".lock"))
    lines = (copy / "documents.jsonl").read_text().splitlines(keepends=True)
    (copy / "documents.jsonl").write_text("".join(lines[: len(lines) // 3]))
    with pytest.raises(
        DamagedArtefactError, match="does not match its manifest's checksum: delete that folder"
    ) as info:
        corpus.documents("train", copy)
    assert "\n" not in str(info.value)
    shutil.rmtree(copy)
    monkeypatch.setattr(corpus, "_fetch_command", lambda *args: pytest.fail("downloaded again"))
    corpus.build_corpus(copy)
    assert (copy / "documents.jsonl").read_bytes() == (original / "documents.jsonl").read_bytes()
    assert corpus.verify_corpus(copy) == corpus.verify_corpus(original)
