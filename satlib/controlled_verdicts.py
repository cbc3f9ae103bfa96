"""What the controlled students say (methods layer; beyond the paper): which saturated, whether the saturation rule
flags its positive controls, whether the factors later work blames move the head's effective rank, and whether
Pythia's parallel blocks matter.

The tables read here are :func:`satlib.controlled.measure`'s (one row per student and checkpoint, with
:func:`satlib.saturation.derived_columns`); :func:`student_verdicts` turns them into one row per student, and the
``*_claim`` functions into ledger records whose criteria are fixed in :mod:`satlib.claims`.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from satlib.claims import CLAIMS, NEAR_FLOOR, SATURATION_RISE
from satlib.saturation import after_minimum
from satlib.verdicts import Claim, compare

#: How each factor a student may change reads in a finding (its value after the colon).
FACTOR_NAMES = {"batch_size": "batch {:g}", "weight_decay": "weight decay {:g}", "final_lr": "final rate {:g}",
                "parallel": "blocks {}", "schedule": "{} schedule"}  # fmt: skip
#: Each factor's value in a table made before the factor existed (a student's defaults).
DEFAULTS = {"schedule": "cosine", "weight_decay": 0.1, "batch_size": 256, "final_lr": 0.1, "parallel": True,
            "switch": None, "seed": 0}  # fmt: skip


def student_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Did each student saturate? One row per student (indexed by its label), from its checkpoints in step order.

    Columns: ``width``, ``arm`` (the label without the seed), the factors (:data:`DEFAULTS`), ``control`` (its
    stream switched worlds: a positive control), ``tokens per parameter`` reached, ``lowest loss at step``, ``last
    step``, ``rise after minimum`` and ``saturated`` (a rise above :data:`satlib.claims.SATURATION_RISE` nats: on
    a fresh stream nothing else makes the loss rise), the final gaps to the rank-d floor, the layer-norm class's
    floor (rank d - 1 plus a bias) and the entropy rate, whether anisotropy or singular entropy jumped after the
    minimum (:func:`satlib.saturation.after_minimum`), the effective rank at the minimum and at the end, and
    ``rank drop before rise`` (a saturated student whose effective rank had its largest fall between two checkpoints
    of the last three quarters of training at or before its lowest loss, that is before the loss rose; every head
    collapses early in training, which says nothing about a late rise).
    """
    rows = {}
    for label, group in table.groupby("student", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        best, rise, anisotropy_jumped, entropy_jumped = after_minimum(group)
        factors = {name: group[name].iloc[0] if name in group else default for name, default in DEFAULTS.items()}
        switch = factors["switch"]
        factors["switch"] = None if switch is None or pd.isna(switch) else float(switch)
        ranks = group.effective_rank.to_numpy(dtype=float)
        late = int(np.searchsorted(group.step.to_numpy(), group.step.iloc[-1] / 4))  # the early collapse is no sign
        drop = late + int(np.argmin(np.diff(ranks[late:]))) + 1 if len(ranks) - late > 1 else len(ranks)
        layer_norm = group.gap_to_layer_norm_floor if "gap_to_layer_norm_floor" in group else group.gap_to_floor
        rows[label] = {
            "width": int(group.width.iloc[0]), "arm": re.sub(r", seed \d+$", "", str(label)), **factors,
            "control": factors["switch"] is not None,
            "tokens per parameter": float(group.tokens_per_parameter.iloc[-1]),
            "lowest loss at step": int(group.step.iloc[best]), "last step": int(group.step.iloc[-1]),
            "rise after minimum": rise, "saturated": bool(rise > SATURATION_RISE),
            "final gap to floor": float(group.gap_to_floor.iloc[-1]),
            "final gap to layer-norm floor": float(layer_norm.iloc[-1]),
            "final gap to entropy": float(group.gap_to_entropy.iloc[-1]),
            "anisotropy jumped": anisotropy_jumped, "singular entropy jumped": entropy_jumped,
            "effective rank at minimum": float(ranks[best]), "final effective rank": float(ranks[-1]),
            "rank drop before rise": bool(rise > SATURATION_RISE and drop <= best),
        }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def short_names(arms: list[str]) -> dict[str, str]:
    """Each arm's label without the parts every arm shares (``d=4, batch 16`` for ``d=4, cosine, wd 0.1, zipf 1,
    batch 16`` when all arms are cosine at zipf 1): names for tables and legends."""
    parts = [arm.split(", ") for arm in arms]
    shared = set.intersection(*(set(p) for p in parts)) if parts else set()
    return {arm: ", ".join(p for p in part if p not in shared) or arm for arm, part in zip(arms, parts, strict=True)}


def arm_summary(verdict: pd.DataFrame) -> pd.DataFrame:
    """The students of each arm together (its seeds): one row per arm (:func:`short_names`), in the grid's order,
    with ``width``,
    ``seeds``, the largest ``tokens per parameter``, how many ``saturated``, the largest ``rise after minimum``,
    the range of the final gaps to the layer-norm floor, the mean and range of the final effective rank, and how
    many students' anisotropy or singular entropy jumped."""
    groups = verdict.groupby("arm", sort=False)
    gap, rank = groups["final gap to layer-norm floor"], groups["final effective rank"]
    gaps = [f"{low:.3f} to {high:.3f}" for low, high in zip(gap.min(), gap.max(), strict=True)]
    names = short_names(list(groups.groups))
    summary = pd.DataFrame({
        "width": groups.width.first(), "seeds": groups.size(),
        "tokens per parameter": groups["tokens per parameter"].max(), "saturated": groups.saturated.sum(),
        "largest rise": groups["rise after minimum"].max(), "gap to layer-norm floor": gaps,
        "final effective rank": rank.mean(), "rank range": rank.max() - rank.min(),
        "anisotropy jumped": groups["anisotropy jumped"].sum(),
        "entropy jumped": groups["singular entropy jumped"].sum(),
    })  # fmt: skip
    return summary.rename(index=names)


def detector_claim(verdict: pd.DataFrame, source: str) -> Claim:
    """The ledger record of the positive controls (``x-saturation-detector``): does the saturation rule flag every
    student whose world changed part-way, and how many normal students does it flag?"""
    controls, normal = verdict[verdict.control], verdict[~verdict.control]
    if controls.empty:
        finding = "not tested: no positive control in this grid"
    elif controls.saturated.all():
        finding = f"the rule flags every positive control ({len(controls)})"
    else:
        finding = f"the rule misses {int((~controls.saturated).sum())} of {len(controls)} positive controls"
    rises, flagged = controls["rise after minimum"], int(normal.saturated.sum())
    book = (f"controls rise {rises.min():.3f} to {rises.max():.3f} nats after their minimum; the rule flags "
            f"{flagged} of {len(normal)} normal students" if len(controls) else "no control")  # fmt: skip
    return CLAIMS["x-saturation-detector"].judge(finding, book, source)


def detector_passed(verdict: pd.DataFrame) -> bool:
    """Every positive control of a verdict table is flagged (and there is at least one)."""
    controls = verdict[verdict.control]
    return bool(len(controls)) and bool(controls.saturated.all())


def bottleneck_claim(
    verdict: pd.DataFrame, rank: int, reference: float, source: str, sample_offset: float = 0.0
) -> Claim:
    """The ledger record of the controlled test (``x-controlled-bottleneck``): does saturation appear only below the
    rank, only under some settings, or not at all, judged on the normal students, against the layer-norm floors and
    Pythia-14M's tokens per parameter at its best checkpoint (``reference``)? ``sample_offset``: the true
    distribution's loss on the held-out windows minus the entropy rate (every measured gap carries it; a caveat
    says how many narrow students stay near their floors once it is removed)."""
    normal = verdict[~verdict.control]
    below, above = normal[normal.width < rank], normal[normal.width >= rank]
    saturated_below, saturated_above = int(below.saturated.sum()), int(above.saturated.sum())
    gap = below["final gap to layer-norm floor"]
    reach = below["tokens per parameter"]
    past = below[reach > reference]
    gaps = f"{gap.min():.3f} to {gap.max():.3f} nats"
    if not detector_passed(verdict):
        finding = "not decided: the saturation rule did not flag every positive control"
    elif saturated_below == 0 and saturated_above == 0 and (past["final gap to layer-norm floor"] <= NEAR_FLOOR).any():
        finding = (f"the bottleneck does not suffice: no student saturates, and narrow students trained past "
                   f"the best checkpoint of Pythia-14M end {gaps} above their layer-norm floors")  # fmt: skip
    elif saturated_below == 0 and saturated_above == 0:
        finding = (f"not decided at this length: no student saturates, and below the rank they end {gaps} above "
                   f"their layer-norm floors (near means within {NEAR_FLOOR}), reaching "
                   f"{reach.max():,.0f} tokens per parameter")  # fmt: skip
    elif saturated_above == 0 and saturated_below == len(below):
        finding = "every student narrower than the rank saturates, none at or above it"
    elif saturated_above == 0:
        finding = f"{saturated_below} of {len(below)} students below the rank saturate (only under some settings)"
    else:
        finding = f"students saturate below ({saturated_below}) and above ({saturated_above}) the rank"
    book = (f"{len(normal)} students ({normal.seed.nunique()} seeds), narrow ones up to {reach.max():,.0f} tokens "
            f"per parameter (Pythia-14M's best checkpoint: {reference:,.0f}); largest rise after a minimum "
            f"{normal['rise after minimum'].max():.4f} nats")  # fmt: skip
    corrected = int((gap - sample_offset <= NEAR_FLOOR).sum())
    caveats = ["one seed per student" if normal.seed.nunique() < 2 else "",
               f"the held-out windows are a sample: the true distribution scores {sample_offset:+.4f} nats against "
               f"the entropy rate on them; without that offset {corrected} of {len(below)} narrow students end "
               f"within {NEAR_FLOOR} nats of their floors" if sample_offset else "",
               "the floors are fitted: upper bounds on each class's true minimum (the fit's starts agree to within "
               "their spread, shown in the chapter)"]  # fmt: skip
    return CLAIMS["x-controlled-bottleneck"].judge(finding, book, source, caveats)


def factor_of(arm: pd.Series, base: pd.Series) -> str:
    """How an arm's student differs from the base student, in words (``batch 16``, ``blocks sequential``)."""
    changes = [FACTOR_NAMES[name].format("sequential" if name == "parallel" else arm[name])
               for name in FACTOR_NAMES if arm[name] != base[name]]  # fmt: skip
    return ", ".join(changes) or "the base"


def factor_effects(verdict: pd.DataFrame, base_arm: str, column: str = "final effective rank") -> pd.DataFrame:
    """Each arm of the base student's width against the base, seed by seed (:func:`satlib.verdicts.compare`).

    Returns:
        One row per arm other than the base (index: :func:`factor_of`): its mean ``column``, the base's, the
        difference, the spread (the larger range over seeds), ``seeds``, and ``direction`` (``higher``, ``lower``
        or ``no clear difference``).
    """
    normal = verdict[~verdict.control]
    base = normal[normal.arm == base_arm].sort_values("seed")
    if base.empty:
        raise ValueError(f"no student of the base arm {base_arm!r}: pass one of {sorted(set(normal.arm))}")
    rows = {}
    same_width = normal[(normal.width == base.width.iloc[0]) & (normal.arm != base_arm)]
    for arm, group in same_width.groupby("arm", sort=False):
        group = group.sort_values("seed")
        seeds = sorted(set(group.seed) & set(base.seed))
        mine, theirs = group.set_index("seed")[column][seeds], base.set_index("seed")[column][seeds]
        comparison = compare(mine.to_numpy(), theirs.to_numpy())
        rows[factor_of(group.iloc[0], base.iloc[0])] = {
            "arm": arm, column: float(mine.mean()), "base": float(theirs.mean()),
            "difference": comparison.difference, "spread": comparison.spread, "seeds": comparison.seeds,
            "direction": comparison.direction,
        }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def factors_claim(effects: pd.DataFrame, verdict: pd.DataFrame, source: str) -> Claim:
    """The ledger record of the factors (``x-controlled-factors``): which arms move the final effective rank beyond
    the seeds' spread, and how the rank behaves around the loss rise of the students that saturate."""
    moved = effects[effects.direction != "no clear difference"]
    words = {"higher": "raises", "lower": "lowers"}
    moves = "; ".join(f"{factor} {words[row.direction]} it" for factor, row in moved.iterrows())
    finding = (f"{moves}; no other arm moves it beyond the spread" if len(moved)
               else "no arm moves the final effective rank beyond the spread over seeds")  # fmt: skip
    saturated = verdict[verdict.saturated & ~verdict.control]
    if saturated.empty:
        finding += "; no student saturates, so co-occurrence with a loss rise is not testable"
    else:
        falls = int((saturated["final effective rank"] < saturated["effective rank at minimum"]).sum())
        first = int(saturated["rank drop before rise"].sum())
        finding += (f"; of {len(saturated)} saturating students the rank falls with the rise in {falls} and its "
                    f"largest drop precedes the rise in {first}")  # fmt: skip
    book = "; ".join(f"{factor}: {row.difference:+.3f} (spread {row.spread:.3f})" for factor, row in effects.iterrows())
    caveats = ["at one token budget the batch size also sets the number of steps, and every arm trains at one peak "
               "rate chosen for none of them: an effect of the batch size is an effect of both",
               "the spectrum is of the head W alone, as the paper measures it; the final layer norm's gain can move "
               "scale between itself and W, and weight decay acts on both",
               "seeds pair initialisation and data order; another batch shape draws other streams"]  # fmt: skip
    return CLAIMS["x-controlled-factors"].judge(finding, f"final effective rank minus the base's: {book}", source,
                                                caveats)  # fmt: skip


def blocks_claim(verdict: pd.DataFrame, base_arm: str, source: str) -> Claim:
    """The ledger record of parallel against sequential blocks (``x-parallel-blocks``): the base arm (parallel)
    against the arm that differs from it by its blocks only."""
    normal = verdict[~verdict.control]
    parallel = normal[normal.arm == base_arm].sort_values("seed")
    effects = factor_effects(verdict, base_arm, "final gap to entropy")
    sequential_arm = effects.arm.get("blocks sequential")
    if sequential_arm is None:
        raise ValueError(f"no arm with sequential blocks beside {base_arm!r}: add one to the grid")
    sequential = normal[normal.arm == sequential_arm]
    saturated_parallel, saturated_sequential = int(parallel.saturated.sum()), int(sequential.saturated.sum())
    loss = effects.loc["blocks sequential"]
    ends = ("end with no clear difference in held-out loss" if loss.direction == "no clear difference"
            else f"end {loss.direction} in held-out loss")  # fmt: skip
    if saturated_parallel and not saturated_sequential:
        finding = f"sequential blocks avoid the degradation ({saturated_parallel} parallel students saturate)"
    elif saturated_sequential and not saturated_parallel:
        finding = f"the reverse: {saturated_sequential} sequential students saturate, no parallel one"
    elif saturated_parallel:
        finding = "both kinds of blocks degrade"
    else:
        finding = f"not testable here: no student of either kind saturates; sequential blocks {ends}"
    book = (f"sequential minus parallel final held-out loss {loss.difference:+.4f} nats (spread "
            f"{loss.spread:.4f}, {int(loss.seeds)} seeds); saturated: parallel {saturated_parallel}, sequential "
            f"{saturated_sequential}")  # fmt: skip
    return CLAIMS["x-parallel-blocks"].judge(finding, book, source)
