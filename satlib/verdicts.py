"""Verdicts: the ledger's record of a judged claim, the one vocabulary of verdicts, and the one rule for "helps" and
"hurts" (methods layer: plain records and arithmetic).

* :class:`Claim` is one row of the claims ledger; its verdict is a word of :data:`VERDICTS` (or, for a question
  beyond the paper, :data:`BEYOND` and a short finding).
* :func:`compare`: a difference between two arms counts only when it exceeds the seed-to-seed spread and every seed
  agrees on its sign.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from satlib.errors import ConfigurationError

#: The verdicts of the book, explained on the intro page. Questions beyond the paper use ``BEYOND + finding``.
VERDICTS = {
    "reproduced": "independent data or models, criterion met",
    "re-derived": "recomputed from the paper's own values or other published data: agreement checks the method, "
    "not the finding",
    "partly re-derived": "recomputed from the paper's own values or other published data: some parts of the "
    "criterion met, others not",
    "not re-derived": "recomputed from the paper's own values or other published data, which do not give the "
    "paper's stated result",
    "verified (vacuous here)": "a bound that holds wherever it was checked but is too loose to constrain the "
    "quantity it bounds at the book's scale",
    "partly reproduced": "some parts of the criterion met, others not",
    "not reproduced at this scale": "the book's models or data do not reach the regime the claim is about",
    "contradicted": "the book's evidence goes against the claim",
    "not tested": "the book cannot test it (the record says why)",
}
BEYOND = "tested beyond the paper: "
#: The keys of every record in ``claims.json``.
RECORD_KEYS = ("id", "chapter", "claim", "paper_value", "book_value", "criterion", "verdict", "provenance")


@dataclass(frozen=True)
class Claim:
    """One row of the ledger: a claim, the paper's and the book's values, the criterion and the verdict.

    Attributes:
        id: a short stable name (``fig6-rank-heads``). chapter: the notebook that judges it. section: the paper's
            section (the ledger is grouped by it). claim: what the paper says, in one sentence.
        paper_value: the paper's number or statement, with its source. book_value: what the book computed.
        criterion: how the verdict is decided (fixed before the result). verdict: a word of :data:`VERDICTS`, or
            :data:`BEYOND` and a short finding. provenance: where the book's value comes from.
        caveats: what the verdict rests on that a reader must know (one seed, a grid edge, a difference inside the
            seed-to-seed spread, a limit of the paper's own evidence).
    """

    id: str
    chapter: str
    section: str
    claim: str
    paper_value: str
    book_value: str
    criterion: str
    verdict: str
    provenance: str
    caveats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS and not (self.verdict.startswith(BEYOND) and len(self.verdict) > len(BEYOND)):
            raise ConfigurationError(
                f"claim {self.id}: verdict {self.verdict!r} is not in the book's vocabulary {sorted(VERDICTS)} "
                f"and does not start with {BEYOND!r}"
            )

    def record(self) -> dict:
        """The claim as a JSON-ready dict (every key of :data:`RECORD_KEYS`, then ``section`` and ``caveats``)."""
        return {key: getattr(self, key) for key in RECORD_KEYS} | {"section": self.section,
                                                                   "caveats": list(self.caveats)}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Two arms measured over the same seeds (e.g. a mixture head and a linear head), compared.

    Attributes:
        difference: mean of ``a`` minus mean of ``b``. spread: the larger of the two arms' ranges over seeds (0 for
            one seed). seeds: how many. agree: every seed's paired difference has the difference's sign.
        direction: ``lower`` or ``higher`` (a below or above b, beyond the spread, every seed agreeing), or
            ``no clear difference``.
    """

    difference: float
    spread: float
    seeds: int
    agree: bool
    direction: str = field(default="no clear difference")

    @property
    def one_seed(self) -> bool:
        return self.seeds < 2


def compare(a: ArrayLike, b: ArrayLike, minimum: float = 0.0) -> Comparison:
    """Compare two arms seed by seed (paired): a direction only when the mean difference exceeds both the seed-to-seed
    spread and ``minimum``, and every seed agrees on its sign. With one seed there is no spread: the direction is
    then given by ``minimum`` alone, and :attr:`Comparison.one_seed` says so."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigurationError(
            f"compare needs two equal, non-empty 1-D arrays (one value per seed), got {a.shape}, {b.shape}"
        )
    difference = float(a.mean() - b.mean())
    spread = float(max(np.ptp(a), np.ptp(b))) if a.size > 1 else 0.0
    agree = bool(np.all(np.sign(a - b) == np.sign(difference))) and difference != 0
    threshold = max(spread, minimum)
    # Strictly beyond the threshold, not by the last bits of a mean: 33.33 - 23.33 must not beat a spread of 10.
    clear = agree and abs(difference) - threshold > 1e-9 * max(1.0, threshold)
    direction = ("lower" if difference < 0 else "higher") if clear else "no clear difference"
    return Comparison(difference, spread, int(a.size), agree, direction)


def records_json(claims: list[Claim]) -> str:
    """The records of some claims as one JSON text (what a chapter glues for the build's ledger)."""
    return json.dumps([claim.record() for claim in claims])


def claims_from_json(text: str) -> list[Claim]:
    """Claims back from :func:`records_json` (the build reads them out of executed chapters)."""
    return [Claim(**{k: v for k, v in record.items() if k != "caveats"}, caveats=tuple(record.get("caveats", ())))
            for record in json.loads(text)]  # fmt: skip
