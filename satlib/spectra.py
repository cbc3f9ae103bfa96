"""The LM head's singular spectrum along training, against the paper's Figures 4 and 5 (methods layer; §4.2).

The singular entropy is ``KL(p || uniform)`` with ``p_i = sigma_i^k / sum_j sigma_j^k``; the paper does not say
which power k. A collapsed spectrum (one singular value, the others at a ratio r of it) has a closed-form entropy
(:func:`collapsed_entropy`); with the ratios the paper's Figure 4 shows after a collapse, only one power reproduces
the plateaus of its Figure 5 (:func:`paper_normalisation`, :func:`supported_power`). That power,
:data:`SINGULAR_ENTROPY_POWER`, is what every reading of "flattens" and "collapses" in the book uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from satlib.claims import CLAIMS, COLLAPSE_FACTOR
from satlib.metrics import singular_entropy
from satlib.verdicts import Claim

#: The power of the singular values in the singular entropy that the paper's Figures 4 and 5 support
#: (:func:`supported_power`; a test recomputes it from the paper's values).
SINGULAR_ENTROPY_POWER = 2


def collapsed_entropy(ratio: float, width: int, power: float) -> float:
    """Singular entropy of a collapsed spectrum: one singular value, the d - 1 others ``ratio`` times it.

    Closed form: p_0 = 1 / (1 + (d - 1) r^k), p_i = r^k p_0, KL = log d - H(p).
    """
    first = 1.0 / (1.0 + (width - 1) * ratio**power)
    rest = ratio**power * first
    entropy = -(first * np.log(first) + (width - 1) * rest * np.log(rest))
    return float(np.log(width) - entropy)


def paper_normalisation(ratios: pd.DataFrame, plateaus: pd.DataFrame) -> pd.DataFrame:
    """Which power of the singular values reproduces the paper's collapsed singular entropies (Figures 4 and 5).

    For each model of the paper with a collapse, the entropy of a spectrum whose other singular values sit at the
    ratios the paper's Figure 4 shows after the collapse is computed with k = 1 and k = 2 (:func:`collapsed_entropy`)
    and set beside the plateau its Figure 5 shows.

    Args:
        ratios: one row per model: ``model``, ``width``, ``ratio_low``, ``ratio_high`` (sigma_i / sigma_0 after
            the collapse, digitised from Figure 4).
        plateaus: one row per model: ``model``, ``plateau`` (singular entropy after the collapse, Figure 5).

    Returns:
        One row per model: the paper's plateau, and the range of the entropy with k = 1 and k = 2.
    """
    table = ratios.merge(plateaus, on="model")
    for power in (1, 2):
        table[f"sigma{power}_low"] = [collapsed_entropy(r.ratio_high, r.width, power) for r in table.itertuples()]
        table[f"sigma{power}_high"] = [collapsed_entropy(r.ratio_low, r.width, power) for r in table.itertuples()]
    return table


def collapsed_ratios(figure4: pd.DataFrame) -> pd.DataFrame:
    """The models whose head collapses in the paper's Figure 4, with the range of sigma_i / sigma_0 after the
    collapse (columns ``model``, ``width``, ``ratio_low``, ``ratio_high``; the digitised table's own columns)."""
    collapsed = figure4.dropna(subset=["collapse_step_k"])
    return pd.DataFrame(
        {
            "model": collapsed.model,
            "width": collapsed.d,
            "ratio_low": collapsed.post_ratio_low,
            "ratio_high": collapsed.post_ratio_high,
        }
    )


def collapse_plateaus(figure5: pd.DataFrame) -> pd.DataFrame:
    """The singular entropy each model of the paper's Figure 5 ends at (``model``, ``plateau``)."""
    return pd.DataFrame({"model": figure5.model, "plateau": figure5.final_value})


def supported_power(table: pd.DataFrame, tolerance: float = 0.1) -> int | None:
    """The power k whose computed range holds the paper's plateau, within ``tolerance`` (relative: the digitisation
    error of Figure 5's log axis), for more models than the other power; None on a tie.

    Args:
        table: :func:`paper_normalisation`'s rows.
    """
    inside = {}
    for power in (1, 2):
        low, high = table[f"sigma{power}_low"] / (1 + tolerance), table[f"sigma{power}_high"] * (1 + tolerance)
        inside[power] = int(((table.plateau >= low) & (table.plateau <= high)).sum())
    return None if inside[1] == inside[2] else max(inside, key=inside.get)


def with_entropies(table: pd.DataFrame) -> pd.DataFrame:
    """``entropy_sigma1`` and ``entropy_sigma2`` (both normalisations) of every row's ``head_singular_values``."""
    return table.assign(
        **{f"entropy_sigma{k}": table.head_singular_values.map(lambda s, k=k: singular_entropy(s, k)) for k in (1, 2)}
    )


def collapse_table(
    table: pd.DataFrame, power: int = SINGULAR_ENTROPY_POWER, factor: float = COLLAPSE_FACTOR, early: float = 0.1
) -> pd.DataFrame:
    """Did each model's head flatten, and did it collapse (paper Figures 4 and 5)? One row per model.

    After step 0, the warm-up *peak* is the highest entropy in the first ``early`` fraction of training; the
    *minimum* the lowest after it; the *late maximum* the highest in the last three quarters of training. The head
    *fell* (flattened) when the minimum is below half the peak, and *collapsed* when the late maximum exceeds
    ``factor`` times the minimum.

    Args:
        table: one row per checkpoint with ``model``, ``tokens`` and ``head_singular_values``.
    """
    rows = {}
    entropy = table.head_singular_values.map(lambda sigma: singular_entropy(sigma, power))
    for model, group in table.assign(entropy=entropy)[table.tokens > 0].groupby("model", sort=False):
        group = group.sort_values("tokens").reset_index(drop=True)
        last = group.tokens.max()
        warm_up = group[group.tokens <= early * last]
        peak = int(warm_up.entropy.idxmax()) if len(warm_up) else 0
        after = group.iloc[peak:]
        low = int(after.entropy.idxmin())
        late = group[group.tokens >= 0.25 * last].entropy.max()
        minimum = float(group.entropy[low])
        rows[model] = {
            "peak": float(group.entropy[peak]),
            "minimum": minimum,
            "minimum at tokens": int(group.tokens[low]),
            "late maximum": float(late),
            "final": float(group.entropy.iloc[-1]),
            "fell": bool(minimum < 0.5 * group.entropy[peak]),
            "collapsed": bool(late > factor * minimum),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def spectral_claims(collapses: pd.DataFrame, normalisation: pd.DataFrame) -> list[Claim]:
    """The ledger records of the paper's Figures 4 and 5 from the book's heads (:func:`collapse_table`) and the
    normalisation check (:func:`paper_normalisation`)."""
    power = supported_power(normalisation)
    collapsed = list(collapses.index[collapses.collapsed])
    fell = list(collapses.index[collapses.fell])
    rise = (collapses["late maximum"] / collapses.minimum).max()
    figure4 = CLAIMS["fig4-spectral-saturation"].judge(
        "reproduced" if collapsed else "not reproduced at this scale",
        f"a late collapse in {len(collapsed)} of {len(collapses)} suite models (largest late rise "
        f"{rise:.2f} times the minimum, threshold {COLLAPSE_FACTOR:g})",
        "the book's suite, every checkpoint, singular values of the output head",
        ["none of the book's models saturates: the claim concerns saturated models"] if not collapsed else [],
    )
    verdict = "reproduced" if collapsed and fell else "partly reproduced" if fell else "not reproduced at this scale"
    figure5 = CLAIMS["fig5-singular-entropy"].judge(
        verdict,
        f"the entropy falls to under half its warm-up peak in {len(fell)} of {len(collapses)} models; it jumps late "
        f"in {len(collapsed)} (largest late rise {rise:.2f} times the minimum); "
        f"the paper's plateaus fit sigma^{power} normalisation "
        f"({int(_inside(normalisation, power))} of {len(normalisation)} models)",
        "the book's suite; the normalisation from the paper's own Figures 4 and 5 (digitised)",
        ["the normalisation is re-derived from digitised values"],
    )
    return [figure4, figure5]


def entropy_phases_text(collapses: pd.DataFrame, paper_minima: pd.Series, factor: float = COLLAPSE_FACTOR) -> str:
    """What :func:`collapse_table` found, in two sentences for the prose of the paper's Figure 5: whether and where
    the heads flattened (the entropy under half its warm-up peak), against the paper's pre-collapse minima, then
    whether a late jump followed. Every number and every word of the verdict comes from the table.

    Args:
        collapses: :func:`collapse_table`'s rows. paper_minima: the paper's pre-collapse minima (Figure 5,
            digitised), one per model.
    """
    fell = collapses[collapses.fell]
    total = len(collapses)
    ratio = collapses.minimum / collapses.peak
    paper = (
        f"the paper's Figure 5 falls to {paper_minima.min():.2f} to {paper_minima.max():.2f} before its "
        "collapses (digitised)"
    )
    if len(fell) == 0:
        flat = (f"Then the heads do not flatten by the chapter's criterion: in none of the {total} models does the "
                f"entropy fall to under half its warm-up peak; its lowest value after the peak is "
                f"{ratio.min():.2f} to {ratio.max():.2f} times the peak ({collapses.minimum.min():.2f} to "
                f"{collapses.minimum.max():.2f}), where {paper}.")  # fmt: skip
    else:
        which = "every one of the models" if len(fell) == total else f"{len(fell)} of the {total} models"
        flat = (f"Then the heads flatten in {which}: the entropy falls to under half its warm-up peak, "
                f"reaching {fell.minimum.min():.2f} to {fell.minimum.max():.2f}, where {paper}.")  # fmt: skip
        if len(fell) < total:
            rest = collapses[~collapses.fell]
            flat += (f" In the others ({', '.join(rest.index)}) it stays at {ratio[rest.index].min():.2f} to "
                     f"{ratio[rest.index].max():.2f} times its peak.")  # fmt: skip
    rise = collapses["late maximum"] / collapses.minimum
    collapsed = collapses[collapses.collapsed]
    if len(collapsed) == 0:
        jump = (f"No collapse follows: the largest late rise is {rise.max():.2f} times the minimum, where a "
                f"collapse needs more than {factor:g} times.")  # fmt: skip
    else:
        jump = (f"A collapse follows in {len(collapsed)} of the {total} models ({', '.join(collapsed.index)}): "
                f"a late rise of up to {rise.max():.2f} times the minimum, more than the {factor:g} times a "
                "collapse needs.")  # fmt: skip
    return f"{flat} {jump}"


def _inside(table: pd.DataFrame, power: int, tolerance: float = 0.1) -> int:
    low, high = table[f"sigma{power}_low"] / (1 + tolerance), table[f"sigma{power}_high"] * (1 + tolerance)
    return int(((table.plateau >= low) & (table.plateau <= high)).sum())


def frequency_claim(final_alignment: pd.Series, collapses: pd.DataFrame) -> Claim:
    """The ledger record of the paper's hypothesis that a collapsed head's surviving directions encode frequency:
    not tested unless some head collapsed; the un-collapsed heads' alignment is reported as context."""
    collapsed = list(collapses.index[collapses.collapsed])
    if collapsed:
        values = final_alignment[collapsed]
        verdict = "reproduced" if (values > 0.5).all() else "contradicted"
        book = f"|Spearman| of the top direction with log-frequency in collapsed heads: {values.min():.2f} or more"
        return CLAIMS["frequency-directions"].judge(verdict, book, "the book's suite, final checkpoints")
    book = (
        f"no head collapsed; in the un-collapsed heads the top direction's |Spearman| with log-frequency is "
        f"{final_alignment.min():.2f} to {final_alignment.max():.2f}"
    )
    return CLAIMS["frequency-directions"].judge(
        "not tested",
        book,
        "the book's suite, final checkpoints",
        ["no head of the book collapsed, so the hypothesis cannot be tested"],
    )


def spectrum_phases(table: pd.DataFrame, early: float = 0.1) -> pd.DataFrame:
    """The phases of the head's singular entropy along each run (paper Figure 5), one row per run.

    An untrained head is nearly flat (entropy near 0). The warm-up frequency phase steepens it (an early
    *peak*, searched in the first ``early`` fraction of the run's tokens); training then flattens it to a
    *minimum* (searched after the peak); a saturating model's spectrum then collapses (the entropy rises again,
    tenfold in the paper): ``rebound`` is the final value over that minimum, and may exceed the early peak.
    """
    rows = {}
    for run_name, group in table[table.step > 0].groupby("run", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        warm_up = group[group.tokens_per_parameter <= early * group.tokens_per_parameter.max()]
        peak = int(warm_up.singular_entropy.idxmax()) if len(warm_up) else 0
        after = group.iloc[peak:]
        low = int(after.singular_entropy.idxmin())
        rows[run_name] = {
            "peak": float(group.singular_entropy[peak]),
            "peak at tokens per parameter": float(group.tokens_per_parameter[peak]),
            "minimum after the peak": float(group.singular_entropy[low]),
            "minimum at tokens per parameter": float(group.tokens_per_parameter[low]),
            "final": float(group.singular_entropy.iloc[-1]),
            "rebound": float(group.singular_entropy.iloc[-1] / group.singular_entropy[low]),
        }
    return pd.DataFrame.from_dict(rows, orient="index")
