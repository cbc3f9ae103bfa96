"""satlib.controlled_verdicts: every branch of the chapter 08 verdicts, on made-up students whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from satlib import controlled_verdicts as cv

BASE = "d=4, cosine, wd 0.1, zipf 1, batch 64"


def checkpoints(label: str, losses: list[float], ranks: list[float], width: int = 4, **factors) -> pd.DataFrame:
    """One made-up student's checkpoints: its losses and effective ranks at steps 0, 10, 20, ..."""
    n = len(losses)
    return pd.DataFrame({"student": label, "step": np.arange(n) * 10, "width": width, "heldout_loss": losses,
                         "effective_rank": ranks, "tokens_per_parameter": np.arange(n) * 100.0,
                         "last_anisotropy": 0.3, "singular_entropy": 0.5, "gap_to_floor": np.array(losses) - 1.0,
                         "gap_to_layer_norm_floor": np.array(losses) - 1.1, "gap_to_entropy": np.array(losses) - 0.9,
                         **factors})  # fmt: skip


def test_student_verdicts_read_the_rise_the_ranks_and_the_factors():
    rising = checkpoints(f"{BASE}, seed 2", [3.0, 2.0, 1.5, 1.6], [3.0, 3.5, 2.0, 1.5], seed=2, switch=np.nan)
    falling = checkpoints("old student", [3.0, 2.0, 1.5, 1.45], [3.0, 2.9, 2.8, 2.7])  # a table without factors
    verdict = cv.student_verdicts(pd.concat([rising, falling], ignore_index=True))
    first, second = verdict.loc[f"{BASE}, seed 2"], verdict.loc["old student"]
    assert first.arm == BASE and first.seed == 2 and not first.control and first.switch is None
    assert first.saturated and first["rise after minimum"] == pytest.approx(0.1)
    assert first["lowest loss at step"] == 20 and first["effective rank at minimum"] == 2.0
    assert first["final effective rank"] == 1.5 and first["rank drop before rise"]  # 3.5 -> 2.0 at step 20
    assert first["final gap to layer-norm floor"] == pytest.approx(0.5)
    assert not second.saturated and second.batch_size == 256 and second.parallel  # Pythia's recipe by default
    assert not second["rank drop before rise"]  # no rise to precede


def test_an_early_collapse_or_a_drop_after_the_minimum_does_not_precede_the_rise():
    """The positive control's shape: the head collapses early (step 10), the loss rises after step 50 and the rank
    falls after it; neither drop precedes the rise. Moved before the minimum, the late drop does."""
    losses = [4.0, 3.0, 2.5, 2.2, 2.0, 1.9, 2.3, 2.4, 2.5]
    after = checkpoints("control", losses, [3.5, 1.2, 1.5, 2.5, 3.0, 3.2, 3.0, 2.8, 2.7])
    before = checkpoints("other", losses, [3.5, 1.2, 1.5, 2.5, 3.0, 2.6, 2.6, 2.6, 2.6])
    verdict = cv.student_verdicts(pd.concat([after, before], ignore_index=True))
    assert verdict.saturated.all() and verdict["lowest loss at step"].eq(50).all()
    assert not verdict.loc["control", "rank drop before rise"] and verdict.loc["other", "rank drop before rise"]


def test_arm_summary_gathers_the_seeds_of_each_arm():
    rows = [checkpoints(f"{BASE}, seed {seed}", [3.0, 2.0, 2.0 + 0.02 * seed], [3.0, 2.0 + seed, 2.0 + seed], seed=seed)
            for seed in range(3)]  # fmt: skip
    summary = cv.arm_summary(cv.student_verdicts(pd.concat(rows, ignore_index=True)))
    assert list(summary.index) == [BASE]  # one arm: nothing to leave out
    row = summary.iloc[0]
    assert row.seeds == 3 and row.saturated == 2 and row["largest rise"] == pytest.approx(0.04)  # rises 0, 0.02, 0.04
    assert row["final effective rank"] == pytest.approx(3.0) and row["rank range"] == pytest.approx(2.0)


def test_short_names_leave_out_what_every_arm_shares():
    arms = [BASE, f"{BASE}, sequential", "d=64, cosine, wd 0.1, zipf 1, batch 64"]
    assert cv.short_names(arms) == {BASE: "d=4", f"{BASE}, sequential": "d=4, sequential",
                                    "d=64, cosine, wd 0.1, zipf 1, batch 64": "d=64"}  # fmt: skip
    assert cv.short_names([BASE, BASE]) == {BASE: BASE}  # all shared: the full label


def verdicts(rows: list[dict]) -> pd.DataFrame:
    """A made-up verdict table: defaults for every column the claims read."""
    defaults = {"width": 4, "arm": BASE, "seed": 0, "control": False, "saturated": False, "rise after minimum": 0.0,
                "tokens per parameter": 10_000.0, "final gap to layer-norm floor": 0.02, "final effective rank": 3.0,
                "effective rank at minimum": 3.0, "rank drop before rise": False,
                "final gap to entropy": 0.3, "schedule": "cosine", "weight_decay": 0.1, "batch_size": 64,
                "final_lr": 0.1, "parallel": True}  # fmt: skip
    return pd.DataFrame([defaults | row for row in rows], index=[f"student {i}" for i in range(len(rows))])


CONTROL = {"control": True, "saturated": True, "rise after minimum": 0.5, "arm": f"{BASE}, switch at 0.75"}


@pytest.mark.parametrize(
    ("rows", "finding"),
    [
        ([CONTROL, {}], "the rule flags every positive control (1)"),
        ([CONTROL, CONTROL | {"saturated": False}, {}], "the rule misses 1 of 2 positive controls"),
        ([{}], "not tested: no positive control in this grid"),
    ],
)
def test_the_detector_record_follows_its_criterion(rows, finding):
    claim = cv.detector_claim(verdicts(rows), "made up")
    assert claim.verdict == "tested beyond the paper: " + finding and claim.id == "x-saturation-detector"


@pytest.mark.parametrize(
    ("rows", "finding"),
    [
        ([CONTROL | {"saturated": False}, {}], "not decided: the saturation rule did not flag"),
        ([CONTROL, {}, {"width": 64}], "the bottleneck does not suffice"),
        ([CONTROL, {"final gap to layer-norm floor": 0.2}], "not decided at this length"),
        ([CONTROL, {"tokens per parameter": 1_000.0}], "not decided at this length"),  # near, but short of Pythia
        ([CONTROL, {"saturated": True}, {"width": 64}], "every student narrower than the rank saturates"),
        ([CONTROL, {"saturated": True}, {}], "1 of 2 students below the rank saturate"),
        ([CONTROL, {"saturated": True}, {"width": 64, "saturated": True}], "students saturate below (1) and above"),
    ],
)
def test_the_bottleneck_record_follows_its_criterion(rows, finding):
    claim = cv.bottleneck_claim(verdicts(rows), 32, 5_000.0, "made up")
    assert claim.verdict.startswith("tested beyond the paper: " + finding), claim.verdict
    assert "Pythia-14M's best checkpoint: 5,000" in claim.book_value


def test_the_bottleneck_record_says_what_the_held_out_sample_shifts():
    rows = [CONTROL, {"final gap to layer-norm floor": 0.02}, {"final gap to layer-norm floor": 0.04}]
    claim = cv.bottleneck_claim(verdicts(rows), 32, 5_000.0, "made up", sample_offset=-0.02)
    assert any("scores -0.0200 nats" in c and "1 of 2 narrow students end within 0.05" in c for c in claim.caveats)
    assert not any("scores" in c for c in cv.bottleneck_claim(verdicts(rows), 32, 5_000.0, "made up").caveats)


def arms(rank_shift: float, spread: float, **change) -> list[dict]:
    """The base and one changed arm, three seeds each: the changed arm's final effective rank is shifted."""
    name = f"{BASE}, changed"
    return [row for seed in range(3) for row in (
        {"seed": seed, "final effective rank": 3.0 + spread * seed, "final gap to entropy": 0.3 + spread * seed},
        {"seed": seed, "arm": name, "final effective rank": 3.0 + rank_shift + spread * seed,
         "final gap to entropy": 0.3 + rank_shift + spread * seed, **change})]  # fmt: skip


def test_factor_effects_move_only_beyond_the_spread():
    moved = cv.factor_effects(verdicts(arms(-0.5, 0.1, batch_size=16)), BASE)
    assert list(moved.index) == ["batch 16"] and moved.direction.iloc[0] == "lower"
    assert moved.difference.iloc[0] == pytest.approx(-0.5) and moved.spread.iloc[0] == pytest.approx(0.2)
    inside = cv.factor_effects(verdicts(arms(0.15, 0.1, weight_decay=0.5)), BASE)
    assert inside.direction.iloc[0] == "no clear difference"  # 0.15 is inside the spread of 0.2
    with pytest.raises(ValueError, match="no student of the base arm 'nobody'"):
        cv.factor_effects(verdicts(arms(0.0, 0.1)), "nobody")


def test_the_factors_record_says_what_moves_and_what_cannot_be_tested():
    table = verdicts(arms(0.5, 0.1, weight_decay=0.5))
    claim = cv.factors_claim(cv.factor_effects(table, BASE), table, "made up")
    assert claim.verdict == (
        "tested beyond the paper: weight decay 0.5 raises it; no other arm moves it beyond the spread; no student "
        "saturates, so co-occurrence with a loss rise is not testable"
    )
    saturated = {"saturated": True, "final effective rank": 2.0, "rank drop before rise": True, "seed": 5}
    table = verdicts([*arms(0.0, 0.1, final_lr=0.0), saturated])
    claim = cv.factors_claim(cv.factor_effects(table, BASE), table, "made up")
    assert claim.verdict.endswith("of 1 saturating students the rank falls with the rise in 1 and its largest drop "
                                  "precedes the rise in 1")  # fmt: skip
    assert "final rate 0: +0.000" in claim.book_value


@pytest.mark.parametrize(
    ("base", "sequential", "finding"),
    [
        ({"saturated": True}, {}, "sequential blocks avoid the degradation (3 parallel students saturate)"),
        ({}, {"saturated": True}, "the reverse: 3 sequential students saturate, no parallel one"),
        ({"saturated": True}, {"saturated": True}, "both kinds of blocks degrade"),
        ({}, {}, "not testable here: no student of either kind saturates; sequential blocks end lower in held-out"),
    ],
)
def test_the_blocks_record_follows_its_criterion(base, sequential, finding):
    rows = [row | (sequential if row.get("parallel") is False else base) for row in arms(-0.5, 0.1, parallel=False)]
    claim = cv.blocks_claim(verdicts(rows), BASE, "made up")
    assert claim.verdict.startswith("tested beyond the paper: " + finding), claim.verdict
    with pytest.raises(ValueError, match="no arm with sequential blocks"):
        cv.blocks_claim(verdicts(arms(-0.5, 0.1, batch_size=16)), BASE, "made up")
