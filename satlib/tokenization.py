"""Tokenizers and tokenized splits of the offline corpus (sources layer).

* :func:`train_bpe` trains a byte-level BPE (the ``tokenizers`` library, as GPT-2 and Pythia) on the training
  split and saves ``tokenizer.json``; :func:`load_tokenizer` loads it through transformers like a hub
  tokenizer. Vocabulary sizes are those the presets need (4,096 and 8,192).
* :func:`token_ids` encodes a split once and caches it as a NumPy file (documents joined by the end-of-text
  token), written atomically; :func:`encoded_split` does the same with any tokenizer (SmolLM2's, Pythia's).

Everything here is keyed by the corpus's content (:func:`satlib.corpus.corpus_id`): a different corpus never
reuses a tokenizer or token file built from another.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from satlib.config import cache_dir
from satlib.corpus import corpus_id, documents
from satlib.errors import ConfigurationError
from satlib.storage import build_once, write_atomically

END_OF_TEXT = "<|endoftext|>"
BPE_VOCAB_SIZES = (4096, 8192)


def tokenizer_dir(vocab_size: int) -> Path:
    """Folder of the BPE tokenizer of this vocabulary size (and its encoded splits), keyed by the corpus."""
    if vocab_size not in BPE_VOCAB_SIZES:
        raise ConfigurationError(f"no BPE tokenizer of vocabulary {vocab_size}: use one of {list(BPE_VOCAB_SIZES)}")
    return cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{corpus_id()}"


def train_bpe(vocab_size: int) -> Path:
    """Train (once) a byte-level BPE of ``vocab_size`` tokens on the training split; return its ``tokenizer.json``."""
    path = tokenizer_dir(vocab_size) / "tokenizer.json"

    def build() -> None:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet, show_progress=False
        )
        tokenizer.train_from_iterator((d.text for d in documents("train")), trainer=trainer)
        write_atomically(path, tokenizer.to_str(pretty=True))

    build_once(path.is_file, build, path.parent / ".lock")
    return path


def load_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The BPE tokenizer of ``vocab_size`` tokens as a ``transformers.PreTrainedTokenizerFast``."""
    return PreTrainedTokenizerFast(tokenizer_file=str(train_bpe(vocab_size)), eos_token=END_OF_TEXT)


def _encode_split(split: str, folder: Path, encode: Callable[[list[str]], list[list[int]]], end: int) -> NDArray:
    """Encode a split once into ``<folder>/<split>.npy`` (documents joined by ``end``); read it memory-mapped."""
    path = folder / f"{split}.npy"

    def build() -> None:
        encoded = encode([d.text for d in documents(split)])
        ids = np.concatenate([np.asarray([*e, end], dtype=np.uint32) for e in encoded])
        ids = ids.astype(np.uint16) if ids.max() < 2**16 else ids
        buffer = io.BytesIO()
        np.save(buffer, ids)
        write_atomically(path, buffer.getvalue())

    build_once(path.is_file, build, folder / ".lock")
    return np.load(path, mmap_mode="r")


def token_ids(split: str, vocab_size: int) -> NDArray[np.uint16]:
    """All documents of ``split`` encoded with the BPE of ``vocab_size``, each followed by end-of-text.

    Cached as ``<split>.npy`` beside the tokenizer; shape (n_tokens,), dtype uint16.
    """
    tokenizer = Tokenizer.from_file(str(train_bpe(vocab_size)))
    encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts)]  # noqa: E731
    return _encode_split(split, tokenizer_dir(vocab_size), encode, tokenizer.token_to_id(END_OF_TEXT))


def encoded_split(tokenizer: PreTrainedTokenizerFast, name: str, split: str) -> NDArray:
    """A split encoded with any ``transformers`` tokenizer (e.g. SmolLM2's 49,152 tokens), cached under ``name``,
    the corpus and a hash of the tokenizer itself (a mirror or another revision may tokenize differently)."""
    encode = lambda texts: tokenizer(texts, add_special_tokens=False).input_ids  # noqa: E731
    identity = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:10]
    folder = cache_dir() / "tokenizers" / f"{name}-{corpus_id()}-{identity}"
    return _encode_split(split, folder, encode, tokenizer.eos_token_id)


def unigram_log_frequencies(ids: NDArray, vocab_size: int) -> NDArray[np.float64]:
    """Log relative frequency of each token id in ``ids`` (add-one smoothed), shape (vocab_size,)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    return np.log(counts / counts.sum())
