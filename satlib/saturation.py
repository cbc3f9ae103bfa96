"""Saturation, the phenomenon of paper §3: in Pythia's published evaluations, against the scaling law, and in the
book's own runs (methods layer).

Pure functions of tables (Pythia's evaluations, the paper's values, one row per checkpoint of a run); nothing here
trains or loads a model. Each claim of §3 is judged here by the criterion :mod:`satlib.claims` fixed for it:

* :func:`evaluation_degradation` and :func:`saturation_claim`: late degradation in the published evaluations;
* :func:`table1_comparison` and :func:`table1_claim`: the paper's Table 1 against the evaluations;
* :func:`underperformance` and :func:`law_claims`: how far the small models end above the extrapolated law;
* :func:`saturation_verdict` and :func:`long_run_claim`: whether a run of the book saturated or overfit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from satlib.claims import CLAIMS, COLLAPSE_FACTOR, SATURATION_RISE
from satlib.metrics import singular_entropy
from satlib.scaling import ChinchillaFit, fit_chinchilla, relative_gap
from satlib.spectra import SINGULAR_ENTROPY_POWER
from satlib.verdicts import Claim

#: Evaluations before this step are near-random and dwarf the scale; the paper's late phase comes after it.
LATE_FROM_STEP = 13_000
#: Table 1's metrics that Pythia's published evaluations include: (task, metric, scale to the paper's units,
#: lower is better).
TABLE1_METRICS = {
    "lambada_ppl": ("lambada_openai", "ppl", 1.0, True),
    "lambada_acc": ("lambada_openai", "acc", 100.0, False),
    "sciq_acc": ("sciq", "acc", 100.0, False),
    "arc_easy_acc": ("arc_easy", "acc", 100.0, False),
}


def evaluation_degradation(
    curves: pd.DataFrame, lower_is_better: bool, from_step: int = LATE_FROM_STEP
) -> pd.DataFrame:
    """Per model (a column of ``curves``, index the step): its best checkpoint from ``from_step`` on, the final value
    and ``degradation``, how much worse the final one is as a ratio above 1 (``final / best`` for a lower-is-better
    metric such as perplexity, ``best / final`` for accuracy)."""
    late = curves[curves.index >= from_step]
    best_step = late.idxmin() if lower_is_better else late.idxmax()
    best = late.min() if lower_is_better else late.max()
    final = late.iloc[-1]
    return pd.DataFrame(
        {
            "best step": best_step,
            "best": best,
            "final": final,
            "degradation": final / best if lower_is_better else best / final,
        }
    )


def saturation_claim(degradation: pd.DataFrame, sizes: pd.Series, threshold: float = 1.10) -> Claim:
    """The ledger record of §3's saturation, from the published LAMBADA perplexities (:func:`evaluation_degradation`)
    and each model's parameter count."""
    ratio = degradation["degradation"]
    small = ratio[sizes[ratio.index] <= 2e8]
    large = ratio[sizes[ratio.index] >= 1e9]
    small_ok, large_ok = bool((small > threshold).all()), bool((large <= threshold).all())
    verdict = "re-derived" if small_ok and large_ok else "partly re-derived" if small_ok else "not re-derived"
    middle = ratio[(sizes[ratio.index] > 2e8) & (sizes[ratio.index] < 1e9)]
    book = (
        f"final / best LAMBADA perplexity: {', '.join(f'{m} {v:.2f}' for m, v in small.items())}; "
        f"{', '.join(f'{m} {v:.2f}' for m, v in middle.items())}; 1B to 12B {large.min():.2f} to {large.max():.2f}"
    )
    return CLAIMS["s3-saturation"].judge(
        verdict,
        book,
        "Pythia's published LM Evaluation Harness results (EleutherAI/pythia at a19eecb), zero-shot",
        [
            "the evaluations include no 14M or 31M model",
            f"Pythia-410M, which the paper's text includes, does not degrade by this measure ({middle.iloc[0]:.2f})"
            if len(middle)
            else "",
            "the paper's limitations: the smallest GPT-2 is anisotropic but has no checkpoints to show saturation",
        ],
    )


def table1_comparison(value: dict[str, pd.Series], stderr: dict[str, pd.Series], paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1 beside Pythia-160M's published evaluations: each metric's own best checkpoint from step
    13,000 and the final one, and whether the final is worse by more than two standard errors of the difference.

    Args:
        value, stderr: per metric name of :data:`TABLE1_METRICS`, the model's values and standard errors by step
            (already in the paper's units).
        paper: the paper's Table 1 (rows ``best`` and ``final``).
    """
    rows = {}
    for name, (_, _, _, lower_is_better) in TABLE1_METRICS.items():
        late = value[name][value[name].index >= LATE_FROM_STEP]
        best_step = int(late.idxmin() if lower_is_better else late.idxmax())
        worse_by = (late.iloc[-1] - late[best_step]) * (1 if lower_is_better else -1)
        noise = 2 * float(np.hypot(stderr[name][best_step], stderr[name][late.index[-1]]))
        rows[name] = {
            "paper best": float(paper.loc["best", name]),
            "paper final": float(paper.loc["final", name]),
            "best step": best_step,
            "best": float(late[best_step]),
            "final": float(late.iloc[-1]),
            "worse by": float(worse_by),
            "two standard errors": noise,
            "clearly worse": bool(worse_by > noise),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def table1_claim(comparison: pd.DataFrame) -> Claim:
    """The ledger record of Table 1 from :func:`table1_comparison`."""
    worse = list(comparison.index[comparison["clearly worse"]])
    verdict = "re-derived" if len(worse) == len(comparison) else "partly re-derived" if worse else "not re-derived"
    book = "; ".join(
        f"{name} {row.best:.1f} (step {row['best step']:,}) then {row.final:.1f}"
        f"{'' if row['clearly worse'] else ' (within noise)'}"
        for name, row in comparison.iterrows()
    )
    return CLAIMS["table1"].judge(
        verdict,
        book,
        "Pythia's published evaluations of Pythia-160M (older harness than the paper's)",
        [
            "the paper does not define its best checkpoint: the book uses each metric's own best",
            "a best chosen among many noisy checkpoints is biased upwards",
            "StoryCloze and WikiText are not among the published evaluations: not tested",
        ],
    )


def underperformance(fit: ChinchillaFit, checkpoints: pd.DataFrame, tokens_per_step: int) -> tuple[float, float]:
    """Mean relative excess loss of the small models' final and best checkpoints over the law (paper Figure 1b).

    Args:
        checkpoints: the small models' rows of the paper's Figure 1b (``n_params``, ``final_step``, ``final_loss``,
            ``best_step``, ``best_loss``), each compared with the law at the tokens it had seen.
    """
    final = relative_gap(
        checkpoints.final_loss, fit.predict(checkpoints.n_params, checkpoints.final_step * tokens_per_step)
    )
    best = relative_gap(
        checkpoints.best_loss, fit.predict(checkpoints.n_params, checkpoints.best_step * tokens_per_step)
    )
    return float(np.mean(final)), float(np.mean(best))


def law_claims(
    fits: dict[str, ChinchillaFit], small: pd.DataFrame, paper_a: float, paper_alpha: float, tokens_per_step: int
) -> tuple[list[Claim], str | None]:
    """The ledger records of Figure 1b's fit and of the 8% / 4% underperformance, and the objective the paper's
    constants imply (the fit within 2% of both; None when neither is)."""
    close = {
        name: abs(f.A - paper_a) / paper_a < 0.02 and abs(f.alpha - paper_alpha) / paper_alpha < 0.02
        for name, f in fits.items()
    }
    implied = next((name for name, ok in close.items() if ok), None)
    both = "; ".join(f"{name}: A = {f.A:.2f}, alpha = {f.alpha:.4f}" for name, f in fits.items())
    fit_claim = CLAIMS["fig1b-fit"].judge(
        "re-derived" if implied else "not re-derived",
        both,
        "this book's refit of the losses digitised from the paper's Figure 1b",
        [
            f"the paper's constants imply the {implied} objective"
            if implied
            else "neither objective gives the paper's constants",
            "re-derived from the paper's own (digitised) values: it checks the method, not the finding",
        ],
    )
    gaps = {name: underperformance(f, small, tokens_per_step) for name, f in fits.items()}
    final, best = gaps[implied] if implied else next(iter(gaps.values()))
    met = [abs(100 * final - 8) <= 1, abs(100 * best - 4) <= 1]
    verdict = "re-derived" if all(met) else "partly re-derived" if any(met) else "not re-derived"
    book = "; ".join(f"{name}: final {100 * g[0]:.1f}%, best {100 * g[1]:.1f}%" for name, g in gaps.items())
    gap_claim = CLAIMS["fig1b-underperformance"].judge(
        verdict,
        book,
        "this book's refit of the losses digitised from the paper's Figure 1b",
        [f"judged with the {implied} fit" if implied else "judged with the first fit: neither matches the paper"],
    )
    return [fit_claim, gap_claim], implied


def constants_claim(alternatives: pd.DataFrame) -> Claim:
    """The ledger record of the book's question beyond the paper: the underperformance under every published set of
    Chinchilla constants (rows with ``final gap %`` and ``best gap %``)."""
    final, best = alternatives["final gap %"], alternatives["best gap %"]
    finding = f"final {final.min():.1f}% to {final.max():.1f}%, best {best.min():.1f}% to {best.max():.1f}%"
    return CLAIMS["x-chinchilla-constants"].judge(
        f"the 8% holds within {max(abs(final - 8)):.1f} points ({finding})",
        finding,
        "this book's refits with each set of constants held fixed",
    )


def derived_columns(table: pd.DataFrame, power: float = SINGULAR_ENTROPY_POWER) -> pd.DataFrame:
    """``tokens_per_parameter``, ``last_anisotropy`` (the head's input), ``singular_entropy`` (power ``power``) and
    ``effective_rank`` (``exp H(p)`` of the same normalisation: ``d exp(-singular_entropy)``, between 1 and d) of
    measured checkpoints (columns ``tokens``, ``parameters``, ``anisotropy_profile``, ``head_singular_values``)."""
    entropy = table.head_singular_values.map(lambda sigma: singular_entropy(sigma, power))
    return table.assign(
        tokens_per_parameter=table.tokens / table.parameters,
        last_anisotropy=table.anisotropy_profile.map(lambda profile: profile[-1]),
        singular_entropy=entropy,
        effective_rank=table.head_singular_values.map(len) * np.exp(-entropy.astype(float)),
    )


class AfterMinimum(NamedTuple):
    """What one run's checkpoints did after its lowest held-out loss (see :func:`after_minimum`)."""

    best: int  #: row of the lowest held-out loss, in step order
    rise: float  #: last held-out loss minus the lowest (nats)
    anisotropy_jumped: bool  #: last-layer anisotropy later came ``factor`` times closer to 1 than at the minimum
    entropy_jumped: bool  #: singular entropy later exceeded ``factor`` times its value at the minimum


def after_minimum(run: pd.DataFrame, factor: float = COLLAPSE_FACTOR) -> AfterMinimum:
    """The held-out loss's rise after its minimum, and whether anisotropy and singular entropy jumped after it, for
    one run's checkpoints sorted by step (columns ``heldout_loss``, ``last_anisotropy``, ``singular_entropy``;
    paper §3 and §4). One threshold, ``factor`` (the book's for a jump or a collapse), read on each measure's own
    scale: singular entropy jumps when it rises to more than ``factor`` times its value at the minimum;
    anisotropy, bounded by 1 (collinear), when its distance to 1 shrinks to less than 1 / ``factor`` of that
    distance at the minimum (a doubling of an anisotropy of 0.6 would be impossible)."""
    losses = run.heldout_loss.to_numpy()
    best = int(np.nanargmin(losses))  # a missing measurement (NaN) is never the minimum
    after = run.iloc[best:]
    return AfterMinimum(
        best,
        float(losses[-1] - losses[best]),
        bool(1 - after.last_anisotropy.max() < (1 - after.last_anisotropy.iloc[0]) / factor),
        bool(after.singular_entropy.max() > factor * after.singular_entropy.iloc[0]),
    )


def saturation_verdict(
    table: pd.DataFrame, tolerance: float = SATURATION_RISE, factor: float = COLLAPSE_FACTOR
) -> pd.DataFrame:
    """Did each run saturate? One row per run, computed from its checkpoints (paper §3 and §4).

    A run *saturates* when its held-out loss ends more than ``tolerance`` nats above its minimum while the loss
    on the training sample does not fall below its own value at that minimum (otherwise the rise is
    overfitting). Anisotropy and singular entropy *jump* after the held-out minimum as :func:`after_minimum` says
    (by ``factor``, each on its own scale).

    Args:
        table: rows of :func:`load_snapshot` (``run``, ``step``, ``tokens_per_parameter``, ``heldout_loss``,
            ``train_loss``, ``last_anisotropy``, ``singular_entropy``).
        tolerance: rise of the held-out loss (nats) that counts as saturation.
        factor: rise of anisotropy or singular entropy, as a multiple, that counts as a jump.
    """
    rows = {}
    for run_name, group in table.groupby("run", sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        best, rise, anisotropy_jumped, entropy_jumped = after_minimum(group, factor)
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
            "anisotropy jumped": anisotropy_jumped,
            "singular entropy jumped": entropy_jumped,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def long_run_claim(verdicts: pd.DataFrame, reference_tokens_per_parameter: float) -> Claim:
    """The ledger record of the book's long runs (:func:`saturation_verdict` of the snapshot), beside the tokens per
    parameter at which Pythia-14M was at its best."""
    saturated = list(verdicts.index[verdicts.saturated])
    overfit = list(verdicts.index[verdicts.overfitting])
    reached = verdicts["tokens per parameter"].max()
    finding = (
        "saturates: " + ", ".join(saturated)
        if saturated
        else "overfits: " + ", ".join(overfit)
        if overfit
        else f"no saturation up to {reached:,.0f} tokens per parameter"
    )
    book = (
        f"{len(saturated)} of {len(verdicts)} runs saturate, {len(overfit)} overfit; largest rise after the "
        f"minimum {verdicts['held-out rise after minimum'].max():.4f} nats; {reached:,.0f} tokens per parameter, "
        f"{reached / reference_tokens_per_parameter:.0%} of Pythia-14M's at its best"
    )
    return CLAIMS["x-long-run"].judge(
        finding,
        book,
        "the long-run snapshot committed with satlib (its provenance in chapter 01)",
        ["one seed per run", "the corpus is repeated about five times"],
    )


def refit_with_constants(
    constants: pd.DataFrame, large: pd.DataFrame, small: pd.DataFrame, tokens_per_step: int, delta: float = 1e3
) -> pd.DataFrame:
    """Refit A and alpha on the large models' final checkpoints with each published set of E, B and beta held fixed
    (rows of ``constants``), and the small models' underperformance under each (the book's question beyond §3).

    Returns:
        One row per set of constants: ``E``, ``B``, ``beta``, ``fitted A``, ``fitted alpha``, ``final gap %``,
        ``best gap %``.
    """
    rows = {}
    for name, row in constants.iterrows():
        fit = fit_chinchilla(large.n_params, large.final_step * tokens_per_step, large.final_loss,
                             fixed={"E": row.E, "B": row.B, "beta": row.beta}, delta=delta)  # fmt: skip
        final, best = underperformance(fit, small, tokens_per_step)
        rows[name] = {"E": row.E, "B": row.B, "beta": row.beta, "fitted A": fit.A, "fitted alpha": fit.alpha,
                      "final gap %": 100 * final, "best gap %": 100 * best}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def rise_after_minimum(table: pd.DataFrame, loss: str = "heldout_loss", by: str = "model") -> pd.DataFrame:
    """Per model (or run): the step of its lowest loss, its last step, how far the loss rose after the minimum, and
    whether that rise exceeds :data:`satlib.claims.SATURATION_RISE` (a held-out loss alone cannot tell saturation
    from overfitting: :func:`saturation_verdict` needs a training sample too)."""
    rows = {}
    for name, group in table.groupby(by, sort=False):
        group = group.sort_values("step").reset_index(drop=True)
        best = int(group[loss].idxmin())
        rise = float(group[loss].iloc[-1] - group[loss].iloc[best])
        rows[name] = {"lowest loss at step": int(group.step.iloc[best]), "last step": int(group.step.iloc[-1]),
                      "rise after minimum": rise, "final loss": float(group[loss].iloc[-1]),
                      "rises": bool(rise > SATURATION_RISE)}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def tokens_per_parameter_at_best(checkpoint: pd.Series, tokens_per_step: int) -> float:
    """Tokens per parameter a model had seen at its best checkpoint (a row of the paper's Figure 1b table)."""
    return float(checkpoint.best_step * tokens_per_step / checkpoint.n_params)
