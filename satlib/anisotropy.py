"""Anisotropy of the last layer along training, against the paper's Figures 2 and 3 (methods layer; §4.1).

:func:`satlib.metrics.anisotropy` computes the measure; this module reads it along training (where it jumps and
peaks, :func:`training_landmarks`), times it against the loss in the paper's own Figure 3
(:func:`paper_anisotropy_timing`), asks how that timing moves with the threshold and with the errors of the
figure's reading (:func:`timing_sensitivity`, :func:`sensitivity_pivot`, :func:`timing_text`), and judges the
paper's claims (:func:`anisotropy_claims`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from satlib.claims import CLAIMS
from satlib.errors import ConfigurationError
from satlib.metrics import anisotropy
from satlib.verdicts import Claim

__all__ = [
    "THRESHOLDS",
    "WINDOW",
    "TimingSummary",
    "anisotropy",
    "anisotropy_claims",
    "minimum_tolerance",
    "paper_anisotropy_timing",
    "readings",
    "sensitivity_pivot",
    "timing_claim",
    "timing_sensitivity",
    "timing_summary",
    "timing_text",
    "training_landmarks",
]

#: The anisotropy thresholds the timing of Figure 3 is judged at (the criterion names 0.5 and this grid).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: How many steps after its perplexity minimum a model's anisotropy may first exceed the threshold.
WINDOW = 25_000
#: The errors of the book's reading of Figure 3 (its data file's header): perplexity relative, anisotropy absolute.
PPL_ERROR, ANISO_ERROR = 0.02, 0.03
#: Pythia publishes a checkpoint every this many steps (Biderman et al. 2023), the resolution the paper's Figure 3
#: can draw on; the book's digitisation reads it about every 10,000.
PAPER_CHECKPOINT_EVERY = 1_000


def minimum_tolerance(ppl_error: float = PPL_ERROR) -> float:
    """How far above the lowest perplexity reading another reading can be and still be the true minimum, when each
    reading is off by up to ``ppl_error`` (relative): (1 + e) / (1 - e) - 1, about 4% for e = 2%."""
    return (1 + ppl_error) / (1 - ppl_error) - 1


def training_landmarks(measurements: pd.DataFrame, value: str, loss: str = "heldout_loss") -> pd.DataFrame:
    """Where a measurement jumps and peaks along training, and where the loss is lowest (paper Figure 3).

    Args:
        measurements: one row per checkpoint with ``model``, ``step``, ``tokens``, ``value`` and ``loss`` columns.
        value: the measurement to follow (e.g. last-layer anisotropy).
        loss: the loss column.

    Returns:
        One row per model (in order of appearance): step of the largest increase between consecutive
        checkpoints, peak value with its step, tokens and loss, step of the lowest loss, and the maximum over the
        last three quarters of training (the late phase where the paper sees saturation).
    """
    rows = {}
    for model, group in measurements.groupby("model", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        peak = int(np.nanargmax(group[value].to_numpy()))
        late = group[group.tokens >= 0.25 * group.tokens.max()]
        rows[model] = {
            "largest jump at step": int(group.step[int(np.nanargmax(group[value].diff().to_numpy()))]),
            "peak": float(group[value][peak]),
            "peak at step": int(group.step[peak]),
            "peak at tokens": int(group.tokens[peak]),
            "loss at peak": float(group[loss][peak]),
            "lowest loss at step": int(group.step[int(np.nanargmin(group[loss].to_numpy()))]),
            "late maximum": float(late[value].max()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def paper_anisotropy_timing(figure3: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """When each model of the paper's Figure 3 reaches its lowest perplexity, and when its last-layer anisotropy
    first exceeds ``threshold``. One row per model.

    Args:
        figure3: the digitised table (``step``, ``<model>_ppl``, ``<model>_aniso``).
    """
    rows = {}
    for column in [c for c in figure3.columns if c.endswith("_ppl")]:
        model = column.removesuffix("_ppl")
        ppl, aniso = figure3[column].to_numpy(), figure3[f"{model}_aniso"].to_numpy()
        above = np.flatnonzero(aniso > threshold)
        first = int(figure3.step[above[0]]) if above.size else None
        lowest = int(figure3.step[int(np.argmin(ppl))])
        rows[model.replace("_", "-")] = {
            "lowest perplexity at step": lowest,
            "perplexity minimum": float(ppl.min()),
            f"anisotropy first above {threshold} at step": first,
            "steps after the minimum": None if first is None else first - lowest,
            "final anisotropy": float(aniso[-1]),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _model_name(prefix: str) -> str:
    """``pythia_14m`` as the book spells it, ``Pythia-14M`` (:mod:`satlib.book` sits above this module)."""
    model = prefix.replace("_", "-")
    return "Pythia-" + model.removeprefix("pythia-").upper() if model.startswith("pythia-") else model


def readings(ppl_error: float = PPL_ERROR, aniso_error: float = ANISO_ERROR) -> tuple[str, ...]:
    """The readings of Figure 3 the timing is judged under: as read, then each error of the reading alone."""
    return ("as read", f"minimum within {minimum_tolerance(ppl_error):.0%}", "crossing one reading earlier",
            f"anisotropy +{aniso_error:g}", f"anisotropy −{aniso_error:g}")  # fmt: skip


def timing_sensitivity(
    figure3: pd.DataFrame,
    thresholds: tuple[float, ...] = THRESHOLDS,
    window: int = WINDOW,
    ppl_error: float = PPL_ERROR,
    aniso_error: float = ANISO_ERROR,
) -> pd.DataFrame:
    """How the timing of the paper's Figure 3 moves with the anisotropy threshold and with the errors of its reading.

    For each threshold and each of :func:`readings` (one error at a time), each model's delay from its perplexity
    minimum to the first digitised checkpoint whose anisotropy exceeds the threshold, and whether the criterion
    holds (the crossing no earlier than the minimum and at most ``window`` steps after it). The readings: ``as
    read``; the minimum at any checkpoint whose perplexity is within :func:`minimum_tolerance` of the lowest (each
    reading off by up to ``ppl_error``; the delay then
    spans the candidates, and the worst one counts); the crossing one reading earlier (the true first checkpoint
    above lies after the last reading below; before the first reading, one median interval earlier); anisotropy
    read ``aniso_error`` higher or lower everywhere (which also bounds independent errors of each reading).

    Args:
        figure3: the digitised table (``step``, ``<model>_ppl``, ``<model>_aniso``; one row per reading, in order).

    Returns:
        One row per threshold, reading and model (in that order): ``threshold``, ``reading``, ``model``,
        ``rises`` (anisotropy exceeds the threshold somewhere), ``minimum from`` and ``minimum to`` (the steps the
        minimum may be at), ``first above`` (step, NaN when it never rises), ``earliest delay`` and ``latest
        delay`` (steps, over the minimum's candidates), ``holds`` (True for a model that never rises) and
        ``breaks`` (empty, or how it breaks: ``Pythia-14M 20,000 early``, ``Pythia-31M 5,000 late``: steps before
        the minimum, or beyond the window).
    """
    steps = figure3.step.to_numpy(dtype=np.int64)
    interval = int(np.median(np.diff(steps)))
    labels = readings(ppl_error, aniso_error)
    shifts = {labels[3]: aniso_error, labels[4]: -aniso_error}
    rows = []
    for threshold in thresholds:
        for reading in labels:
            for column in [c for c in figure3.columns if c.endswith("_ppl")]:
                model = column.removesuffix("_ppl")
                ppl = figure3[column].to_numpy(dtype=float)
                aniso = figure3[f"{model}_aniso"].to_numpy(dtype=float) + shifts.get(reading, 0.0)
                if reading == labels[1]:
                    candidates = steps[ppl <= ppl.min() * (1 + minimum_tolerance(ppl_error)) + 1e-9]
                else:
                    candidates = steps[[int(np.argmin(ppl))]]
                above = np.flatnonzero(np.round(aniso, 9) > round(threshold, 9))  # 0.27 + 0.03 is not above 0.3
                row = {"threshold": threshold, "reading": reading, "model": _model_name(model),
                       "rises": bool(above.size), "minimum from": int(candidates.min()),
                       "minimum to": int(candidates.max()), "first above": np.nan, "earliest delay": np.nan,
                       "latest delay": np.nan, "holds": True, "breaks": ""}  # fmt: skip
                if above.size:
                    first = int(steps[above[0]])
                    if reading == labels[2]:
                        first = int(steps[above[0] - 1]) if above[0] > 0 else first - interval
                    earliest, latest = first - int(candidates.max()), first - int(candidates.min())
                    breaks = [f"{row['model']} {-earliest:,} early"] if earliest < 0 else []
                    breaks += [f"{row['model']} {latest - window:,} late"] if latest > window else []
                    row |= {"first above": first, "earliest delay": earliest, "latest delay": latest,
                            "holds": not breaks, "breaks": ", ".join(breaks)}  # fmt: skip
                rows.append(row)
    return pd.DataFrame(rows)


def sensitivity_pivot(sensitivity: pd.DataFrame) -> pd.DataFrame:
    """:func:`timing_sensitivity` as one table (the paper's Figure 3 timing): thresholds as rows, readings as
    columns, each cell ``holds``, ``no model rises`` or the models that break the criterion and by how much
    (``Pythia-14M 20,000 early``)."""
    cells: dict[str, dict[str, str]] = {}
    for (threshold, reading), group in sensitivity.groupby(["threshold", "reading"], sort=False):
        broken = group.breaks[~group.holds]
        text = "; ".join(broken) if len(broken) else "holds" if group.rises.any() else "no model rises"
        cells.setdefault(reading, {})[f"{threshold:g}"] = text
    pivot = pd.DataFrame(cells)
    pivot.index.name = "threshold"
    return pivot


@dataclass(frozen=True)
class TimingSummary:
    """The timing of Figure 3 at the criterion's threshold and across :func:`timing_sensitivity`'s choices.

    Attributes:
        threshold: the criterion's threshold (0.5). rising: how many models exceed it as read. delay_min,
            delay_max: their delays from the perplexity minimum as read (steps; None when none rises).
        as_read_breaks: at ``threshold`` as read, the models that break the criterion (``Pythia-14M 20,000 early``).
        breaking: every choice that breaks it, ``(threshold, reading, breaks)``. choices: how many choices in all.
        thresholds: the grid. reading_every: the median interval between the book's readings (steps).
        window: the criterion's window (steps). ppl_error, aniso_error: the reading's errors.
    """

    threshold: float
    rising: int
    delay_min: int | None
    delay_max: int | None
    as_read_breaks: tuple[str, ...]
    breaking: tuple[tuple[float, str, str], ...]
    choices: int
    thresholds: tuple[float, ...]
    reading_every: int
    window: int
    ppl_error: float
    aniso_error: float

    @property
    def verdict(self) -> str:
        """``re-derived`` when the criterion holds under every choice; ``partly re-derived`` when it holds at the
        criterion's threshold as read but not under every choice; ``not re-derived`` when it fails there (or no
        model rises above the threshold, leaving nothing to time)."""
        if not self.rising or self.as_read_breaks:
            return "not re-derived"
        return "partly re-derived" if self.breaking else "re-derived"

    def breaking_text(self) -> str:
        """Every choice that breaks the criterion, in one line: ``0.3, as read (Pythia-14M 20,000 early); ...``."""
        return "; ".join(f"{t:g}, {reading} ({breaks.replace('; ', ', ')})" for t, reading, breaks in self.breaking)


def timing_summary(
    figure3: pd.DataFrame,
    threshold: float = 0.5,
    thresholds: tuple[float, ...] = THRESHOLDS,
    window: int = WINDOW,
    ppl_error: float = PPL_ERROR,
    aniso_error: float = ANISO_ERROR,
) -> TimingSummary:
    """The criterion of ``fig3-anisotropy-timing`` applied to the paper's Figure 3: at ``threshold`` as read, and
    under every choice of :func:`timing_sensitivity` (``threshold`` must be one of ``thresholds``)."""
    if not any(np.isclose(threshold, t) for t in thresholds):
        raise ConfigurationError(f"threshold {threshold:g} is not in the grid {list(thresholds)}")
    sensitivity = timing_sensitivity(figure3, thresholds, window, ppl_error, aniso_error)
    pivot = sensitivity_pivot(sensitivity)
    breaking = tuple(
        (float(label), reading, text)
        for label, row in pivot.iterrows()
        for reading, text in row.items()
        if text not in ("holds", "no model rises")
    )
    here = sensitivity[np.isclose(sensitivity.threshold, threshold) & (sensitivity.reading == readings()[0])
                       & sensitivity.rises]  # fmt: skip
    delays = here["earliest delay"].astype(int)
    return TimingSummary(
        threshold, len(here), int(delays.min()) if len(here) else None, int(delays.max()) if len(here) else None,
        tuple(here.breaks[~here.holds]), breaking, pivot.size, tuple(thresholds),
        int(np.median(np.diff(figure3.step.to_numpy()))), window, ppl_error, aniso_error,
    )  # fmt: skip


def _after(delay: int) -> str:
    return f"{delay:,} steps after" if delay >= 0 else f"{-delay:,} steps before"


def _span(low: int, high: int) -> str:
    """``0 to 20,000 steps after`` (before ``their lowest perplexity``), or both ends spelled when one is before."""
    return f"{low:,} to {high:,} steps after" if low >= 0 else f"between {_after(low)} and {_after(high)}"


def timing_text(summary: TimingSummary) -> str:
    """The chapter's account of Figure 3's timing, worded from :class:`TimingSummary`: the delays at the criterion's
    threshold as read, the reading's resolution, which choices of threshold and reading break the criterion, and
    the verdict that makes. Every number in it is the summary's."""
    t, window = f"{summary.threshold:g}", f"{summary.window:,}"
    if not summary.rising:
        sentences = [f"As read, no model's anisotropy rises above {t}, so there is no timing to check."]
    else:
        span = _span(summary.delay_min, summary.delay_max)
        fails = "; ".join(summary.as_read_breaks)
        ending = (
            f"so the criterion fails at {t} itself ({fails})" if fails else f"inside the criterion's {window} steps"
        )
        sentences = [f"As read, the {summary.rising} models whose anisotropy rises above {t} first exceed it {span} "
                     f"their lowest perplexity, {ending}."]  # fmt: skip
    sentences.append(
        f"The reading is coarse: Pythia publishes a checkpoint every {PAPER_CHECKPOINT_EVERY:,} steps (Biderman et "
        "al. 2023), which the paper's Figure 3 can draw on, but "
        f"the book reads it only about every {summary.reading_every:,}, with perplexity known to about "
        f"{summary.ppl_error:.0%} and anisotropy to about {summary.aniso_error:g}."
    )
    grid = f"{len(summary.thresholds)} thresholds from {min(summary.thresholds):g} to {max(summary.thresholds):g}"
    if not summary.breaking:
        sentences.append(f"The criterion holds under all {summary.choices} choices ({grid}, each as read and under "
                         "each error of the reading alone).")  # fmt: skip
    else:
        sentences.append(
            f"Of the {summary.choices} choices ({grid}, each as read and under each error of the reading alone), the "
            f"criterion holds under {summary.choices - len(summary.breaking)} and breaks under "
            f'{len(summary.breaking)}; "early" counts steps before the perplexity minimum, "late" steps beyond the '
            f"{window}-step window."
        )
    as_read = [(u, b) for u, reading, b in summary.breaking if reading == readings()[0] and u != summary.threshold]
    if as_read:
        others = len(as_read) == len(summary.thresholds) - 1
        listed = ", ".join(f"{u:g} ({b})" for u, b in as_read)
        sentences.append(
            f"As read, it breaks at {'each of the other thresholds' if others else 'thresholds'}: {listed}."
        )
    here = [(reading, b) for u, reading, b in summary.breaking if u == summary.threshold and reading != readings()[0]]
    if here:
        listed = ", ".join(f"{reading} ({b})" for reading, b in here)
        sentences.append(f"At {t} itself it breaks under {len(here)} of the reading's errors: {listed}.")
    sentences.append(
        {
            "re-derived": "So the timing survives every choice the figure's reading leaves open: re-derived.",
            "partly re-derived": f"So the timing holds at {t} as read but not under every choice the figure's reading "
            "leaves open: partly re-derived.",
            "not re-derived": f"So the timing does not hold at {t} as read: not re-derived.",
        }[summary.verdict]
    )
    return " ".join(sentences)


def timing_claim(summary: TimingSummary) -> Claim:
    """The ledger record of the paper's Figure 3 timing (``fig3-anisotropy-timing``), its verdict
    :attr:`TimingSummary.verdict`, with every choice that breaks the criterion among its caveats."""
    t = f"{summary.threshold:g}"
    if summary.rising:
        span = _span(summary.delay_min, summary.delay_max)
        value = f"at {t} as read: {summary.rising} models rise, {span} their perplexity minimum"
    else:
        value = f"at {t} as read: no model rises above {t}"
    held = summary.choices - len(summary.breaking)
    value += (f"; the criterion holds under {held} of {summary.choices} choices of threshold "
              f"({min(summary.thresholds):g} to {max(summary.thresholds):g}) and reading error")  # fmt: skip
    return CLAIMS["fig3-anisotropy-timing"].judge(
        summary.verdict,
        value,
        "the paper's Figure 3 (digitised)",
        [
            "re-derived from the paper's own figure: it checks the reading, not the finding",
            f"Pythia publishes a checkpoint every {PAPER_CHECKPOINT_EVERY:,} steps (Biderman et al. 2023), which the "
            "paper's Figure 3 can draw on; the book reads the figure about "
            f"every {summary.reading_every:,}",
            f"choices that break the criterion: {summary.breaking_text()}" if summary.breaking else "",
        ],
    )


def anisotropy_claims(
    final_last_layer: pd.Series, landmarks: pd.DataFrame, saturated: bool, timing: TimingSummary
) -> list[Claim]:
    """The ledger records of the paper's Figures 2 and 3.

    Args:
        final_last_layer: each suite model's last-layer anisotropy at its final checkpoint, smallest model first.
        landmarks: :func:`training_landmarks` of the suite (for the book's value).
        saturated: whether any of the book's models saturated.
        timing: :func:`timing_summary` of the paper's Figure 3.
    """
    pattern = bool(final_last_layer.iloc[0] > 0.8 and final_last_layer.iloc[-1] < 0.5)
    verdict = "reproduced" if pattern else "not reproduced at this scale" if not saturated else "contradicted"
    figure2 = CLAIMS["fig2-last-layer-anisotropy"].judge(
        verdict,
        f"final last-layer anisotropy {final_last_layer.min():.2f} to {final_last_layer.max():.2f} across the suite; "
        f"no late rise (at most {landmarks['late maximum'].max():.2f} in the last three quarters of training)",
        "the book's suite on its validation split",
        ["the paper's limitations note OPT-125m without strong last-layer anisotropy"],
    )
    return [figure2, timing_claim(timing)]
