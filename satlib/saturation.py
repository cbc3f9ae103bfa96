"""Reading saturation off measurements: when a run's loss rises, whether that is saturation or overfitting, and
what the head's spectrum and the last layer's anisotropy do meanwhile (methods layer; paper §3 and §4).

Pure functions of tables with one row per checkpoint (from :mod:`satlib.sweep`, a frozen snapshot, or Pythia's
published evaluations); nothing here trains or loads a model.

The singular entropy is ``KL(p || uniform)`` with ``p_i = sigma_i^k / sum_j sigma_j^k``; the paper does not say
which power k. :func:`paper_normalisation` decides it from the paper's own figures (chapter 03 shows the
computation), and :data:`SINGULAR_ENTROPY_POWER` is what every reading of "flattens" and "collapses" uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from satlib.metrics import singular_entropy

#: The power of the singular values in the singular entropy that the paper's Figures 4 and 5 support
#: (:func:`paper_normalisation`; a test recomputes it from the paper's values).
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
    return pd.DataFrame({"model": collapsed.model, "width": collapsed.d, "ratio_low": collapsed.post_ratio_low,
                         "ratio_high": collapsed.post_ratio_high})  # fmt: skip


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


def derived_columns(table: pd.DataFrame, power: float = SINGULAR_ENTROPY_POWER) -> pd.DataFrame:
    """``tokens_per_parameter``, ``last_anisotropy`` (the head's input) and ``singular_entropy`` (power ``power``)
    of measured checkpoints (columns ``tokens``, ``parameters``, ``anisotropy_profile``, ``head_singular_values``)."""
    return table.assign(
        tokens_per_parameter=table.tokens / table.parameters,
        last_anisotropy=table.anisotropy_profile.map(lambda profile: profile[-1]),
        singular_entropy=table.head_singular_values.map(lambda sigma: singular_entropy(sigma, power)),
    )


def saturation_verdict(table: pd.DataFrame, tolerance: float = 0.01, jump: float = 0.2) -> pd.DataFrame:
    """Did each run saturate? One row per run, computed from its checkpoints (paper §3 and §4).

    A run *saturates* when its held-out loss ends more than ``tolerance`` nats above its minimum while the loss
    on the training sample does not fall below its own value at that minimum (otherwise the rise is
    overfitting). Anisotropy and singular entropy *jump* when their maximum after the held-out minimum exceeds
    their value at the minimum by more than ``jump`` (relative).

    Args:
        table: rows of :func:`load_snapshot` (``run``, ``step``, ``tokens_per_parameter``, ``heldout_loss``,
            ``train_loss``, ``last_anisotropy``, ``singular_entropy``).
        tolerance: rise of the held-out loss (nats) that counts as saturation.
        jump: relative rise of anisotropy or singular entropy that counts as a jump.
    """
    rows = {}
    for run_name, group in table.groupby("run", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        best = int(group.heldout_loss.idxmin())
        after = group.iloc[best:]
        rise = float(group.heldout_loss.iloc[-1] - group.heldout_loss.iloc[best])
        train_fell = bool(group.train_loss.iloc[-1] < group.train_loss.iloc[best] - tolerance)
        rows[run_name] = {
            "tokens per parameter": float(group.tokens_per_parameter.iloc[-1]),
            "lowest held-out loss at step": int(group.step.iloc[best]),
            "last step": int(group.step.iloc[-1]),
            "held-out rise after minimum": rise,
            "final held-out loss": float(group.heldout_loss.iloc[-1]),
            "final training-sample loss": float(group.train_loss.iloc[-1]),
            "saturated": bool(rise > tolerance and not train_fell),
            "overfitting": bool(rise > tolerance and train_fell),
            "final anisotropy": float(group.last_anisotropy.iloc[-1]),
            "anisotropy jumped": bool(after.last_anisotropy.max() > (1 + jump) * group.last_anisotropy.iloc[best]),
            "singular entropy jumped": bool(
                after.singular_entropy.max() > (1 + jump) * group.singular_entropy.iloc[best]
            ),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


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
