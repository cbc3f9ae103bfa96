"""Anisotropy of the last layer along training, against the paper's Figures 2 and 3 (methods layer; §4.1).

:func:`satlib.metrics.anisotropy` computes the measure; this module reads it along training (where it jumps and
peaks, :func:`training_landmarks`), times it against the loss in the paper's own Figure 3
(:func:`paper_anisotropy_timing`), and judges the paper's claims.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from satlib.claims import CLAIMS
from satlib.metrics import anisotropy
from satlib.verdicts import Claim

__all__ = ["anisotropy", "anisotropy_claims", "paper_anisotropy_timing", "training_landmarks"]


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


def anisotropy_claims(
    final_last_layer: pd.Series, landmarks: pd.DataFrame, saturated: bool, timing: pd.DataFrame, window: int = 25_000
) -> list[Claim]:
    """The ledger records of the paper's Figures 2 and 3.

    Args:
        final_last_layer: each suite model's last-layer anisotropy at its final checkpoint, smallest model first.
        landmarks: :func:`training_landmarks` of the suite (for the book's value).
        saturated: whether any of the book's models saturated.
        timing: :func:`paper_anisotropy_timing` of the paper's Figure 3.
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
    rising = timing.dropna(subset=["steps after the minimum"])
    delays = rising["steps after the minimum"].astype(int)
    met = bool(len(rising)) and bool(((delays >= 0) & (delays <= window)).all())
    figure3 = CLAIMS["fig3-anisotropy-timing"].judge(
        "re-derived" if met else "contradicted",
        f"{len(rising)} models rise above 0.5; {delays.min():,} to {delays.max():,} steps after their perplexity "
        "minimum"
        if len(rising)
        else "no model rises above 0.5",
        "the paper's Figure 3 (digitised)",
        ["re-derived from the paper's own figure: it checks the reading, not the finding"],
    )
    return [figure2, figure3]
