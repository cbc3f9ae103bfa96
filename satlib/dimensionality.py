"""The dimension of language on the book's own corpus (experiments layer; paper §5.1, Figure 7).

:mod:`satlib.ngram` holds the method (n-gram matrices and their exact W-error); this module runs it on the
offline corpus with three tokenizers and caches the curves, keyed by the corpus's content, the tokenizer, the
n-gram order and the number of contexts.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from satlib.claims import CLAIMS
from satlib.config import cache_dir
from satlib.corpus import corpus_id
from satlib.errors import ConfigurationError
from satlib.models import load_tokenizer, model_token_ids
from satlib.ngram import (
    NgramMatrix,
    context_sweep,
    dimension_above_floor,
    dimension_at,
    ngram_matrix,
    noise_floor,
    split_half_floor,
    split_half_matrices,
)
from satlib.storage import build_once, read_json, write_atomically, write_json
from satlib.tokenization import token_ids
from satlib.verdicts import Claim

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


def corpus_noise_floors(tokenizer: str, context_counts: list[int], n: int = 5) -> pd.DataFrame:
    """The sampling-noise floor of each corpus matrix of :func:`corpus_w_error_curves`: analytic
    (:func:`satlib.ngram.noise_floor`) and split-half (:func:`satlib.ngram.split_half_floor`), cached as JSON.

    Returns:
        One row per C: ``analytic`` and ``split_half`` (relative Frobenius norms of the noise).
    """
    path = cache_dir() / "ngram" / f"{tokenizer}-{corpus_id()}-n{n}-floors.json"

    def build() -> None:
        stored = read_json(path) if path.is_file() else {}
        ids, vocab_size = corpus_token_ids(tokenizer)
        largest = max(context_counts)
        full = ngram_matrix(ids, n, vocab_size, max_contexts=largest)
        first, second = split_half_matrices(ids, n, vocab_size, max_contexts=largest)
        for count in context_counts:
            rows = NgramMatrix(full.matrix[:count], full.contexts[:count], full.counts[:count], full.observed_contexts)
            stored[str(count)] = {"analytic": noise_floor(rows),
                                  "split_half": split_half_floor(first[:count], second[:count], rows)}  # fmt: skip
        write_json(path, stored)

    ready = lambda: path.is_file() and all(str(c) in read_json(path) for c in context_counts)  # noqa: E731
    build_once(ready, build, path.with_suffix(".lock"))
    stored = read_json(path)
    return pd.DataFrame({c: stored[str(c)] for c in context_counts}).T.rename_axis("contexts")


def width_comparison(dimensions: list[int], widths: dict[str, int]) -> str:
    """Where models' hidden sizes stand against the dimensions read off the n-gram curves (paper Figure 7's
    argument: the dimension of language against the width of small models), as a phrase for the prose.

    Each model is *below* the dimensions when its width is smaller than all of them, *within* their range, or
    *above* them; each group is named from its narrowest to its widest model, with their widths.

    Args:
        dimensions: the dimensions read (e.g. d at W-error 0.5 for each tokenizer); at least one.
        widths: hidden size by model name.
    """
    if not dimensions:
        raise ConfigurationError("width_comparison needs at least one dimension")
    low, high = min(dimensions), max(dimensions)
    groups = {
        "above the hidden sizes of": [m for m, w in widths.items() if w < low],
        "within the range of the hidden sizes of": [m for m, w in widths.items() if low <= w <= high],
        "below the hidden sizes of": [m for m, w in widths.items() if w > high],
    }

    def named(models: list[str]) -> str:
        models = sorted(models, key=widths.__getitem__)
        if len(models) == 1:
            return f"{models[0]} ({widths[models[0]]:,})"
        return f"{models[0]} to {models[-1]} ({widths[models[0]]:,} to {widths[models[-1]]:,})"

    return "; ".join(f"{words} {named(models)}" for words, models in groups.items() if models)


def growth_exponents(growth: pd.DataFrame, last: bool = False) -> dict[str, float]:
    """The exponent a of d(0.5) ~ C^a for each tokenizer with at least two readable points (least squares on
    log-log points; the book's question beyond the paper's Figure 7); with ``last``, over its two largest readable
    C only (the local slope where the chapter reads its dimensions).

    Args:
        growth: one row per (tokenizer, C) with ``tokenizer``, ``C`` and ``d at 0.5`` (None where not readable).
    """
    exponents = {}
    for tokenizer, group in growth.dropna(subset=["d at 0.5"]).groupby("tokenizer", sort=False):
        group = group.sort_values("C").iloc[-2:] if last else group
        if len(group) >= 2:
            exponents[tokenizer] = float(np.polyfit(np.log(group.C), np.log(group["d at 0.5"].astype(float)), 1)[0])
    return exponents


def growth_phrase(growth: pd.DataFrame) -> str:
    """What the growth of d(0.5) with the number of contexts C (:func:`growth_exponents`, over every C and over the
    last step) says about the dimensions read at the largest C (paper Figure 7), as sentences for the prose: lower
    bounds for more contexts of the same corpus only when every tokenizer's dimension still grows at the last step;
    nothing about a larger corpus at the same C, which the growth does not measure.

    Args:
        growth: one row per (tokenizer, C) with ``tokenizer``, ``C`` and ``d at 0.5`` (None where not readable).
    """
    overall, local = growth_exponents(growth), growth_exponents(growth, last=True)
    if not overall:
        return "Too few points could be read to say whether these dimensions change with the number of contexts C."
    first, largest = int(growth.C.min()), int(growth.C.max())
    names = ", ".join(overall)
    exponents = (f"as C^{min(overall.values()):.2f} to C^{max(overall.values()):.2f} from C = {first:,} to "
                 f"{largest:,}, and as C^{min(local.values()):.2f} to C^{max(local.values()):.2f} over the last "
                 "step (section 4)")  # fmt: skip
    if min(overall.values()) > 0 and min(local.values()) > 0:
        return (f"These dimensions are not absolute. For {names}, the dimension keeps growing with the number of "
                f"contexts C, {exponents}: read at C = {largest:,}, it is a lower bound for what more contexts of "
                "this corpus give. What a larger corpus would give at the same C is not measured here: noisier "
                "rows raise the dimension too.")  # fmt: skip
    return (f"For {names}, the dimension does not keep growing with the number of contexts C ({exponents}), so a "
            f"dimension read at C = {largest:,} is not shown to be a lower bound.")  # fmt: skip


def dimension_claims(
    curves: dict[str, NDArray[np.float64]],
    floors: dict[str, float],
    growth: pd.DataFrame,
    tokens: dict[str, int],
) -> list[Claim]:
    """The ledger records of the paper's Figure 7 and of the book's question about the number of contexts.

    Args:
        curves: each tokenizer's W-error curve at the chapter's C. floors: each one's noise floor (the larger of
            the two estimates). growth: one row per (tokenizer, C) with ``d at 0.5`` (None where not readable).
        tokens: each tokenizer's number of tokens in the training split the matrices are built from.
    """
    readable, d05 = {}, {}
    for tokenizer, curve in curves.items():
        level = max(0.1, 2 * floors[tokenizer])
        readable[tokenizer] = dimension_at(curve, level)
        d05[tokenizer] = dimension_above_floor(curve, 0.5, floors[tokenizer])
    far = all(d is not None and d > 1000 for d in readable.values())
    inside = [t for t in curves if 0.1 < 2 * floors[t]]
    book = (f"d at W-error 0.5: {', '.join(f'{t} {d}' for t, d in d05.items())}; noise floors "
            f"{min(floors.values()):.2f} to {max(floors.values()):.2f}, so W-error 0.1 lies inside twice the noise "
            f"for {len(inside)} of {len(curves)} tokenizers")  # fmt: skip
    figure7 = CLAIMS["fig7-ngram-dimension"].judge(
        "reproduced" if far else "not reproduced at this scale", book,
        "5-gram matrices of the training split of the book's corpus, exact W-error; noise floors estimated two ways",
        [f"the training split has {min(tokens.values()):,} to {max(tokens.values()):,} tokens (by tokenizer); the "
         "paper's Pile and WikiText far more",
         "the rank of a matrix of C contexts is at most C"],
    )  # fmt: skip
    exponents = growth_exponents(growth)
    finding = (f"d(0.5) grows as C^a, a = {min(exponents.values()):.2f} to {max(exponents.values()):.2f}"
               if exponents else "too few readable points")  # fmt: skip
    contexts = CLAIMS["x-ngram-contexts"].judge(finding, finding, "the book's corpus, C = 250 to 4,000 contexts")
    return [figure7, contexts]
