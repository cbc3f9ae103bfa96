"""New LM heads on frozen backbones (paper §5.1 and §6), in four modules, lowest layer first:

* :mod:`satlib.heads.lowrank`: the rank-constrained head ``W = A B`` and how any head is trained and scored on
  cached features (methods);
* :mod:`satlib.heads.mixture`: the Mixture of Softmaxes and the heads it is compared with (methods);
* :mod:`satlib.heads.features`: what a frozen backbone's head reads, computed once and cached (measurement);
* :mod:`satlib.heads.experiments`: the rank sweep and the mixture comparison, run and summarised (experiments).
"""

from satlib.heads.experiments import (
    expressive_heads,
    mixture_summary,
    rank_constrained_heads,
    rank_summary,
    run_mixture_experiment,
    run_rank_experiment,
)
from satlib.heads.features import HeadData, backbone_features, experiment_data
from satlib.heads.lowrank import (
    HeadFactors,
    LowRankHead,
    covariance_factors,
    degradation_onset,
    evaluate_head,
    fit_head,
    head_factors,
    search_learning_rate,
    training_start_phrase,
    truncation_claim,
    truncation_finding,
    truncation_losses,
)
from satlib.heads.mixture import MixtureOfSoftmaxes, ResidualControl, log_probability_spectrum, matched_output_width

__all__ = [
    "HeadData", "HeadFactors", "LowRankHead", "MixtureOfSoftmaxes", "ResidualControl", "backbone_features",
    "covariance_factors", "degradation_onset", "evaluate_head", "experiment_data", "expressive_heads", "fit_head",
    "head_factors", "log_probability_spectrum", "matched_output_width", "mixture_summary", "rank_constrained_heads",
    "rank_summary", "run_mixture_experiment", "run_rank_experiment", "search_learning_rate",
    "training_start_phrase", "truncation_claim", "truncation_finding", "truncation_losses",
]  # fmt: skip
