"""The dimension of language on the book's own corpus (experiments layer; paper §5.1, Figure 7).

:mod:`satlib.ngram` holds the method (n-gram matrices and their exact W-error); this module runs it on the
offline corpus with three tokenizers and caches the curves, keyed by the corpus's content, the tokenizer, the
n-gram order and the number of contexts.
"""

from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

from satlib.config import cache_dir
from satlib.corpus import corpus_id
from satlib.errors import ConfigurationError
from satlib.models import load_tokenizer, model_token_ids
from satlib.ngram import context_sweep, ngram_matrix
from satlib.storage import build_once, write_atomically
from satlib.tokenization import token_ids

#: Tokenizers of the corpus whose n-gram matrices the book compares: the project's BPEs and SmolLM2's.
TOKENIZERS = ("bpe-4096", "bpe-8192", "smollm2-135m")


def corpus_token_ids(tokenizer: str, split: str = "train") -> tuple[NDArray, int]:
    """A split of the book's corpus encoded by one of :data:`TOKENIZERS`, and that tokenizer's vocabulary size."""
    if tokenizer not in TOKENIZERS:
        raise ConfigurationError(f"unknown tokenizer {tokenizer!r}: use one of {list(TOKENIZERS)}")
    if tokenizer.startswith("bpe-"):
        vocab_size = int(tokenizer.removeprefix("bpe-"))
        return token_ids(split, vocab_size), vocab_size
    return model_token_ids(tokenizer, split), len(load_tokenizer(tokenizer))


def corpus_w_error_curves(tokenizer: str, context_counts: list[int], n: int = 5) -> dict[int, NDArray[np.float64]]:
    """:func:`satlib.ngram.context_sweep` of the corpus's training split under one of :data:`TOKENIZERS`, cached
    per C as ``<cache>/ngram/<tokenizer>-<corpus id>-n<n>-C<C>.npy``; the matrix is built only when a curve is
    missing."""
    folder = cache_dir() / "ngram"
    paths = {count: folder / f"{tokenizer}-{corpus_id()}-n{n}-C{count}.npy" for count in context_counts}

    def build() -> None:
        missing = [count for count, path in paths.items() if not path.is_file()]
        ids, vocab_size = corpus_token_ids(tokenizer)
        ngrams = ngram_matrix(ids, n, vocab_size, max_contexts=max(missing))
        if ngrams.n_contexts < max(missing):
            raise ConfigurationError(f"the corpus has only {ngrams.n_contexts} contexts for {tokenizer}: ask for fewer")
        for count, curve in context_sweep(ngrams, missing).items():
            buffer = io.BytesIO()
            np.save(buffer, curve)
            write_atomically(paths[count], buffer.getvalue())

    build_once(lambda: all(path.is_file() for path in paths.values()), build, folder / f".{tokenizer}.lock")
    return {count: np.load(path) for count, path in paths.items()}
