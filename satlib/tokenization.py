"""Tokenizers and tokenized splits of the offline corpus.

* :func:`train_bpe` trains a byte-level BPE (the ``tokenizers`` library, as GPT-2 and Pythia) on the training
  split and saves ``tokenizer.json``; :func:`load_tokenizer` loads it through transformers like a hub
  tokenizer. Vocabulary sizes are those the presets need (4,096 and 8,192).
* :func:`token_ids` encodes a split once and caches it as a ``uint16`` NumPy file (documents joined by the
  end-of-text token), written atomically.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock
from numpy.typing import NDArray

from satlib.config import cache_dir, write_atomically
from satlib.corpus import CORPUS_VERSION, documents

END_OF_TEXT = "<|endoftext|>"
BPE_VOCAB_SIZES = (4096, 8192)


def tokenizer_dir(vocab_size: int) -> Path:
    """Folder of the BPE tokenizer of this vocabulary size (and its encoded splits)."""
    if vocab_size not in BPE_VOCAB_SIZES:
        raise ValueError(f"no BPE tokenizer of vocabulary {vocab_size}: use one of {list(BPE_VOCAB_SIZES)}")
    return cache_dir() / "tokenizers" / f"bpe-{vocab_size}-{CORPUS_VERSION}"


def train_bpe(vocab_size: int) -> Path:
    """Train (once) a byte-level BPE of ``vocab_size`` tokens on the training split; return its ``tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tokenizer_dir(vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    with FileLock(str(folder / ".lock")):
        if path.is_file():
            return path
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator((d.text for d in documents("train")), trainer=trainer)
        write_atomically(path, tokenizer.to_str(pretty=True))
    return path


def load_tokenizer(vocab_size: int):  # noqa: ANN201 - transformers is imported lazily
    """The BPE tokenizer of ``vocab_size`` tokens as a ``transformers.PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(train_bpe(vocab_size)), eos_token=END_OF_TEXT)


def _encode_split(split: str, folder: Path, encode: Callable[[list[str]], list[list[int]]], end: int) -> NDArray:
    """Encode a split once into ``<folder>/<split>.npy`` (documents joined by ``end``), under a lock."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.npy"
    with FileLock(str(folder / ".lock")):
        if not path.is_file():
            encoded = encode([d.text for d in documents(split)])
            ids = np.concatenate([np.asarray([*e, end], dtype=np.uint32) for e in encoded])
            ids = ids.astype(np.uint16) if ids.max() < 2**16 else ids
            buffer = io.BytesIO()
            np.save(buffer, ids)
            write_atomically(path, buffer.getvalue())
    return np.load(path, mmap_mode="r")


def token_ids(split: str, vocab_size: int) -> NDArray[np.uint16]:
    """All documents of ``split`` encoded with the BPE of ``vocab_size``, each followed by end-of-text.

    Cached as ``<split>.npy`` beside the tokenizer; shape (n_tokens,), dtype uint16.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(train_bpe(vocab_size)))
    encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts)]  # noqa: E731
    return _encode_split(split, tokenizer_dir(vocab_size), encode, tokenizer.token_to_id(END_OF_TEXT))


def model_token_ids(name: str, split: str, preset: str = "tiny") -> NDArray:
    """A split encoded with the tokenizer of a registry model (e.g. SmolLM2's 49,152 tokens), cached under the
    model's name and a hash of its tokenizer."""
    from satlib.models import load_tokenizer

    tokenizer = load_tokenizer(name, preset)
    encode = lambda texts: tokenizer(texts, add_special_tokens=False).input_ids  # noqa: E731
    end = tokenizer.eos_token_id
    # Keyed by the tokenizer itself, not only its name: a mirror or another revision may tokenize differently.
    identity = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:10]
    return _encode_split(split, cache_dir() / "tokenizers" / f"{name}-{CORPUS_VERSION}-{identity}", encode, end)


def unigram_log_frequencies(ids: NDArray, vocab_size: int) -> NDArray[np.float64]:
    """Log relative frequency of each token id in ``ids`` (add-one smoothed), shape (vocab_size,)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size] + 1.0
    return np.log(counts / counts.sum())
